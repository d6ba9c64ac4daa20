"""An AI 100 package end to end with the stand-ins: QPC layout, validation of the ONNX handed
to the compiler, and the qaicrt session contract (tests/standin_qaicrt runs that ONNX)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_pipeline

STANDIN_COMPILER = ROOT / "tests" / "standin_qaic_compile.py"
STANDIN_QAICRT = ROOT / "tests" / "standin_qaicrt"
VENV_PATH = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="module")
def ai100_build(tmp_path_factory):
    store = tmp_path_factory.mktemp("ai100pkg") / "store"
    r = run_pipeline(store, "hw=ai100_16c", f"hw.compiler={STANDIN_COMPILER}", env=VENV_PATH)
    assert r.rc == 0, r.out + r.err
    return store, r


def test_package_has_the_qpc_layout_and_validates_the_compiled_onnx(ai100_build):
    store, r = ai100_build
    v = r.summary["validation"]
    # the exact ONNX handed to the compiler in fp32, then its fp16 + MXFP6 twin through the teacher-forced gate
    assert v["passed"] and v["exact_target"] == "onnx" and v["tokens_compared"] == 32
    assert v["target"] == "onnx-fp16-mxfp6" and v["gate"]["passed"] and v["gate"]["positions"] > 2000
    pkg = Path(r.summary["package"])
    for name in ("qpc/programqpc.bin", "specializations.json", "custom_io.yaml", "qconfig.json", "manifest.json",
                 "model.onnx", "compile.sh"):
        assert (pkg / name).is_file(), name
    qconfig = json.loads((pkg / "qconfig.json").read_text())
    assert qconfig["huggingface_config"]["model_type"] == "llama"
    assert "-aic-num-cores=16" in qconfig["compiler"]["command"]
    assert qconfig["transforms"][0] == "static_kv" and qconfig["qpc"] == "qpc/programqpc.bin"


def run_runtime(pkg, *args, pythonpath=None):
    env = {**os.environ}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "runtime", str(pkg), "--prompt", "The capital of France is", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def test_qaicrt_session_gives_the_reference_tokens(ai100_build):
    store, r = ai100_build
    p = run_runtime(r.summary["package"], "--device", "ai100", "--max-new-tokens", "32", "--json", pythonpath=STANDIN_QAICRT)
    assert p.returncode == 0, p.stdout + p.stderr
    tokens = json.loads(p.stdout.strip().splitlines()[-1])["tokens"]
    ref = json.loads((store / "trees" / r.stage("reference")["digest"] / "reference.json").read_text())
    assert tokens == ref["tokens"]


def test_without_qaicrt_the_ai100_session_says_what_is_missing(ai100_build):
    _store, r = ai100_build
    p = run_runtime(r.summary["package"], "--device", "ai100")
    assert p.returncode == 2
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot import qaicrt" in lines[0] and "/opt/qti-aic/dev/lib" in lines[0]


def test_where_qaicrt_is_present_validate_runs_the_qpc(ai100_build):
    store, _r = ai100_build
    r = run_pipeline(store, "hw=ai100_16c", f"hw.compiler={STANDIN_COMPILER}",
                     env={**VENV_PATH, "PYTHONPATH": str(STANDIN_QAICRT)})
    assert r.rc == 0, r.out + r.err
    assert r.status()["validate"] == "ran" and r.status()["compile"] == "cached"
    assert "runner: onnxruntime -> qaicrt" in r.stage("validate")["why"]
    assert r.summary["validation"]["target"] == "qpc" and r.summary["validation"]["passed"]
