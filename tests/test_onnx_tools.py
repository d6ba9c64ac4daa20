"""Packages open in the onnx library as they are: ``onnx.load`` and ``onnx.checker`` with default arguments.

The store shares a file between cas/ and its trees by hard link; the onnx library refuses
external data with more than one link. A package's external data files are its own (one link),
the stages before it keep sharing; these tests hold both promises.
"""
from __future__ import annotations

import os
from pathlib import Path

from conftest import run_pipeline
from pipeline.store.files import disk_bytes
from test_publish import cli
from test_ai100_package import STANDIN_COMPILER


def opens_in_onnx(package: Path) -> list[str]:
    """Every ONNX file of the package, loaded and checked by the onnx library as a user would."""
    import onnx

    graphs = sorted(package.rglob("*.onnx"))
    assert graphs, f"no ONNX file in {package}"
    for graph in graphs:
        onnx.load(str(graph))
        onnx.checker.check_model(str(graph))
    return [str(g.relative_to(package)) for g in graphs]


def test_every_package_opens_in_the_onnx_library(store, tmp_path):
    cpu = run_pipeline(store)
    assert cpu.rc == 0, cpu.err
    assert opens_in_onnx(Path(cpu.summary["package"])) == ["model.onnx"]
    int4 = run_pipeline(store, "quantize.weights=int4")
    assert int4.rc == 0, int4.err
    opens_in_onnx(Path(int4.summary["package"]))
    scatter = run_pipeline(store, "hw.attention=scatter")
    assert scatter.rc == 0, scatter.err
    assert len(opens_in_onnx(Path(scatter.summary["package"]))) >= 2
    ai100 = run_pipeline(store, "hw=ai100_16c", f"hw.compiler={STANDIN_COMPILER}", "compile.dry_run=true")
    assert ai100.rc == 0, ai100.err
    opens_in_onnx(Path(ai100.summary["package"]))
    # what pipeline.fetch writes
    published = run_pipeline(store, f"to={tmp_path / 'published'}", entry="pipeline.publish")
    assert published.rc == 0, published.err
    name = published.summary["published"][0]["name"]
    fetched = cli("pipeline.fetch", f"{tmp_path / 'published'}/{name}", str(tmp_path / "fetched"))
    assert fetched.returncode == 0, fetched.stderr
    opens_in_onnx(tmp_path / "fetched")
    verify = cli("pipeline.store", "--root", str(store), "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_compiles_of_one_export_share_all_but_their_packages_data(empty_store):
    """N compiles of one export: the store grows by each compile's graph and its package's own
    copy of the weights (on a filesystem without reflinks), never by more."""
    first = run_pipeline(empty_store, "compile.ctx_len=64")
    assert first.rc == 0, first.err
    one = disk_bytes(empty_store)
    weights = os.stat(Path(first.summary["package"]) / "model.onnx.data").st_size
    more = [run_pipeline(empty_store, f"compile.ctx_len={n}") for n in (96, 128, 160)]
    assert all(r.rc == 0 for r in more), [r.err for r in more]
    assert all(r.status()["export"] == "cached" for r in more)
    four = disk_bytes(empty_store)
    # each further compile: its package's weights (one copy) + graphs, manifests and records (< 5 %)
    assert four - one <= 3 * weights * 1.05, (one, four, weights)
    for r in (first, *more):
        data = Path(r.summary["package"]) / "model.onnx.data"
        assert os.stat(data).st_nlink == 1 and os.stat(data).st_mode & 0o777 == 0o444  # its own, read-only
