"""Keys see all the code a pass runs: the project modules it imports, transitively, found from source.

Edits happen in a copy of the project (run with that copy first on sys.path), never in this checkout.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import ROOT, copy_store, run_pipeline
from pipeline import fingerprint


def test_closure_follows_imports_inside_functions_and_parents():
    package = fingerprint.closure("passes.package")
    # imported inside the pass function, and what those import in turn
    assert {"passes.lib.files", "runtime.package_format", "passes.transforms.lora", "runtime.adapters"} <= set(package)
    assert {"passes", "passes.transforms", "pipeline", "pipeline.pass_api", "pipeline.target_api"} <= set(package)
    assert "passes.load" not in package and "passes.export" not in package
    validate = fingerprint.closure("passes.validate")
    assert {"runtime.generate", "runtime.session", "runtime.sessions.ort", "runtime.tokenizer"} <= set(validate)
    assert "passes.lib.onnx_files" in fingerprint.closure("passes.targets.ort.compile")


def test_a_stage_that_asks_its_target_holds_that_target_plugins_code():
    """The package and validate passes reach a target by entry point, not by import: their keys hold
    the code of the target they ask (its class, its session, what those import), and no other's."""
    from pipeline.discovery import find_pass
    from pipeline.keys import stage_code

    for name in ("package", "validate", "benchmark"):
        spec = find_pass(name, "test")
        ai100, cpu = stage_code(spec, {"hw.target": "ai100"}), stage_code(spec, {"hw.target": "cpu"})
        assert {"passes.targets.ai100.target", "passes.targets.ai100.package", "passes.targets.ai100.plan",
                "passes.targets.ai100.sdk", "runtime.sessions.ai100"} <= set(ai100), name
        assert {"passes.targets.ort.target", "runtime.sessions.ort"} <= set(cpu), name
        assert not any(m.startswith("passes.targets.ai100") or m == "runtime.sessions.ai100" for m in cpu), name


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory) -> Path:
    """A copy of the project's code and presets (edits go here)."""
    dst = tmp_path_factory.mktemp("project") / "src"
    for name in ("pipeline", "passes", "runtime", "conf"):
        shutil.copytree(ROOT / name, dst / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def run_copy(project: Path, store: Path, *overrides: str):
    env = {"PYTHONPATH": str(project)}
    return run_pipeline(store, *overrides, env=env, cwd=project)


def edit(project: Path, module: str) -> None:
    path = project / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + "\n# an edit that changes no behaviour\n")


def test_editing_a_module_reruns_exactly_the_passes_that_run_it(built_store, tmp_path, project_copy):
    store = copy_store(built_store, tmp_path / "store")
    same = run_copy(project_copy, store)  # the copy's code is this checkout's: every key hits
    assert same.rc == 0 and set(same.status().values()) == {"cached"}, same.out + same.err

    edit(project_copy, "passes.lib.files")  # link_or_copy: run by compile_ort, quantize and package
    r = run_copy(project_copy, store)
    assert r.rc == 0, r.out + r.err
    ran = {n for n, s in r.status().items() if s == "ran"}
    assert ran == {"compile", "quantize", "package"}, r.status()
    assert r.stage("compile")["why"] == "code of pass compile_ort changed: passes.lib.files"
    assert r.stage("package")["why"] == "code of pass package changed: passes.lib.files"
    # both produced the same bytes: validate is cut off
    assert r.status()["validate"] == "cached"

    edit(project_copy, "runtime.generate")  # run by validate only
    r = run_copy(project_copy, store)
    assert r.rc == 0, r.out + r.err
    assert {n for n, s in r.status().items() if s == "ran"} == {"validate"}, r.status()
    assert r.stage("validate")["why"] == "code of pass validate changed: runtime.generate"
