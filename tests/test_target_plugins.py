"""Targets are plugins: no generic file names one, and a toy target from tests/ builds, validates, infers and serves.

The toy target (tests/toy_target: a fake distribution put on PYTHONPATH, with entry points of
its own) compiles by marking the rewritten ONNX; its session is ONNX Runtime's, checks the
mark, and logs each package it opens. No file of the engine, the passes or the runtime knows it.
"""
from __future__ import annotations

import ast
import io
import json
import os
import re
import tokenize
from pathlib import Path

import onnx
import pytest

from conftest import ROOT, copy_store, infer, run_pipeline
from test_server import Server

# The generic code: the engine, the passes that are not a target's, the runtime but the targets' sessions.
# (passes/transforms/ is left out: its torch ops live in the project's own namespace, ai100pipeline::.)
GENERIC = ("pipeline/**/*.py", "passes/*.py", "passes/lib/*.py", "passes/rewrites/*.py", "passes/embedding/*.py",
           "runtime/*.py", "runtime/speculative/*.py", "runtime/server/*.py", "runtime/sessions/__init__.py")
TARGET_WORDS = re.compile(r"ai100|qaic|QAIC|qpc")
TOY = ROOT / "tests" / "toy_target"


def code_tokens(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every token but comments and docstrings."""
    source = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    return [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type != tokenize.COMMENT and not (tok.type == tokenize.STRING and tok.start[0] in docstrings)]


def named(pattern: re.Pattern) -> list[str]:
    found = []
    for glob in GENERIC:
        for path in sorted(ROOT.glob(glob)):
            found += [f"{path.relative_to(ROOT)}:{line}: {text[:80]}" for line, text in code_tokens(path)
                      if pattern.search(text)]
    return found


def test_no_generic_file_names_a_target():
    assert named(TARGET_WORDS) == []


def test_the_scan_sees_code_not_comments(tmp_path):
    f = tmp_path / "m.py"
    f.write_text('"""ai100 in a docstring."""\nx = 1  # qpc in a comment\ny = "qaic in code"\n')
    assert [text for _, text in code_tokens(f) if TARGET_WORDS.search(text)] == ['"qaic in code"']


@pytest.fixture(scope="module")
def toy(tmp_path_factory, built_store):
    """A store holding tiny_llama built for the cpu and the toy target, and the env that installs the toy plugin."""
    store = copy_store(built_store, tmp_path_factory.mktemp("toy") / "store")
    env = {"PYTHONPATH": os.pathsep.join([str(TOY), os.environ.get("PYTHONPATH", "")]),
           "TOY_SESSION_LOG": str(store.parent / "sessions.log")}
    r = run_pipeline(store, "hw=toy", env=env)
    assert r.rc == 0, r.out + r.err
    return store, env, r


def opened(env: dict) -> list[str]:
    log = Path(env["TOY_SESSION_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def test_a_toy_target_builds_and_validates_through_its_plugin(toy):
    store, env, r = toy
    assert r.status()["export"] == "cached" and r.status()["compile"] == "ran", r.status()  # the cpu build's graph
    assert r.stage("compile")["why"] == "pass: compile_ort -> compile_toy"
    v = r.summary["validation"]
    assert v["passed"] and v["target"] == "toy" and v["tokens_compared"] == 32
    package = Path(r.summary["package"])
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["target"] == manifest["program"]["target"] == "toy"
    marks = {p.key: p.value for p in onnx.load(str(package / "model.onnx"), load_external_data=False).metadata_props}
    assert marks["compiled_by"] == "toy"
    assert opened(env) == [f"opened {package}"]  # validation ran the toy's own session
    # No file of the engine, the passes or the runtime knows the toy target.
    assert named(re.compile(r"toy", re.IGNORECASE)) == []


def test_a_toy_package_infers_and_serves_as_the_cpu_one_does(toy):
    store, env, _ = toy
    cpu = infer(store, "prompt=My name is", "generation_len=12")
    assert cpu.rc == 0, cpu.err
    before = len(opened(env))
    got = infer(store, "hw=toy", "prompt=My name is", "generation_len=12", env=env)
    assert got.rc == 0, got.err
    assert got.exec_info["generated_texts"] == cpu.exec_info["generated_texts"]
    assert len(opened(env)) == before + 1
    server = Server(store, "hw=toy", env=env)
    try:
        text = server.client().completions.create(model="tiny_llama", prompt="My name is", max_tokens=12).choices[0].text
    finally:
        server.stop()
    assert text == cpu.exec_info["generated_texts"][0]
    assert len(opened(env)) == before + 2


def test_an_unknown_target_is_refused_in_one_line(empty_store):
    r = run_pipeline(empty_store, "hw=toy")  # the plugin is not installed in this process
    assert r.rc == 2 and r.err.strip().startswith("error: hw: 'toy' is not a preset"), r.err
