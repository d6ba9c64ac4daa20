"""The store under many builders and missing pieces: 8 processes on one key, 8 on keys that share
inputs, a deleted blob, a truncated record."""
from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys

from conftest import ROOT, run_pipeline
from test_store import store_cli

SHARED = ("load", "export", "rewrite", "reference")


def build_at_once(store, tmp_path, overrides_per_process: list[list[str]]) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline", "model=tiny_llama", f"store.root={store}",
                               f"hydra.run.dir={tmp_path / f'run{i}'}", *overrides],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, overrides in enumerate(overrides_per_process)]
    outs = [p.communicate(timeout=1200) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    return [json.loads((tmp_path / f"run{i}" / "summary.json").read_text()) for i in range(len(procs))]


def statuses(summary: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in summary["stages"]}


def test_eight_processes_on_one_key_build_it_once(tmp_path):
    store = tmp_path / "store"
    summaries = build_at_once(store, tmp_path, [["hw.num_cores=1"]] * 8)
    for stage in ("load", "export", "rewrite", "compile", "package", "reference", "validate"):
        assert [statuses(s)[stage] for s in summaries].count("ran") == 1, stage
    assert len({s["package"] for s in summaries}) == 1 and all(s["validation"]["passed"] for s in summaries)
    assert store_cli(store, "verify").returncode == 0


def test_eight_processes_on_eight_keys_build_each_shared_input_once(tmp_path):
    store = tmp_path / "store"
    summaries = build_at_once(store, tmp_path, [[f"compile.ctx_len={64 * (i + 1)}"] for i in range(8)])
    for stage in SHARED:  # ctx_len enters export's key as a dimension only: one export serves all
        assert [statuses(s)[stage] for s in summaries].count("ran") == 1, (stage, [statuses(s) for s in summaries])
    for stage in ("compile", "package", "validate"):
        assert [statuses(s)[stage] for s in summaries].count("ran") == 8, stage
    assert len({s["package"] for s in summaries}) == 8 and all(s["validation"]["passed"] for s in summaries)
    assert store_cli(store, "verify").returncode == 0


def test_a_deleted_blob_or_a_truncated_record_is_found_and_rebuilt(store):
    first = run_pipeline(store)
    assert first.rc == 0 and set(first.status().values()) == {"cached"}
    package = first.summary["package"]
    # a blob gone from cas/: verify names it; the next run rebuilds what listed it
    weights = max((os.path.join(dp, f) for dp, _d, fs in os.walk(package) for f in fs), key=os.path.getsize)
    blob = next(p for p in (store / "cas").glob("*/*")  # the package's weights are its own copy of this blob
                if os.path.getsize(p) == os.path.getsize(weights) and filecmp.cmp(p, weights, shallow=False))
    blob.unlink()
    v = store_cli(store, "verify")
    assert v.returncode != 0 and blob.name[:12] in v.stdout + v.stderr, v.stdout
    r = run_pipeline(store)
    assert r.rc == 0 and r.summary["validation"]["passed"] and "ran" in r.status().values(), r.err
    assert blob.is_file() and store_cli(store, "verify").returncode == 0
    # a record cut short (a torn write): read as absent, the stage rebuilt, the record whole again
    record = next(p for p in (store / "ac").glob("*.json") if json.loads(p.read_text())["stage"] == "package")
    text = record.read_text()
    os.chmod(record, 0o644)
    record.write_text(text[: len(text) // 2])
    r = run_pipeline(store)
    assert r.rc == 0 and r.status()["package"] == "ran" and r.summary["validation"]["passed"], r.err
    assert json.loads(record.read_text())["stage"] == "package"
    assert store_cli(store, "verify").returncode == 0


def test_gc_waits_for_running_builds_and_removes_nothing_they_use(tmp_path):
    store = tmp_path / "store"
    build = subprocess.Popen([sys.executable, "-m", "pipeline", "model=tiny_llama", f"store.root={store}",
                              f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    for line in build.stdout:  # export has its inputs' trees in use
        if line.startswith("export: running"):
            break
    gc = store_cli(store, "gc", "--max-size", "0", "--keep-recent", "0s")
    out = line + build.stdout.read()
    assert build.wait() == 0 and "validation: passed" in out, out
    assert gc.returncode == 0 and "waiting for them to finish" in gc.stdout, gc.stdout
    assert "removed 0 records" not in gc.stdout  # it ran, after the build
    r = run_pipeline(store)
    assert r.rc == 0 and r.summary["validation"]["passed"]
    assert store_cli(store, "verify").returncode == 0
