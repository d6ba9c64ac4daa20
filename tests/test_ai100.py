"""The Cloud AI 100 compile stage (pass compile_ai100) through the real CLI, on tiny_llama.

The SDK is not installable here: tests/standin_qaic_compile.py stands in for qaic-compile
(it checks the command line and the files it is given, and writes qpc/programqpc.bin). The runs
stop after compile (UP_TO_COMPILE) and the assertions look at the compile stage only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import yaml

from conftest import ROOT, run_pipeline, store_snapshot
from passes.targets.ai100 import compile as c, plan, sdk

STANDIN = ROOT / "tests" / "standin_qaic_compile.py"
# The stand-in runs on `#!/usr/bin/env python3` and needs onnx: the test interpreter first on PATH.
ENV = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
KV = ["past_key.0", "past_value.0", "past_key.1", "past_value.1"]
SDK_PRESENT = any(p.exists() for p in sdk.SDK_COMPILERS)
# Stages up to compile only: package/validate for ai100 are built elsewhere (and cost time here).
UP_TO_COMPILE = ("~pipeline.stages.quantize", "~pipeline.stages.package", "~pipeline.stages.twin", "~pipeline.stages.reference",
                 "~pipeline.stages.validate")


def ai100(store: Path, *overrides: str, env: dict | None = None, hw: str = "ai100_16c", compiler: bool = True):
    args = [f"hw={hw}", *([f"hw.compiler={STANDIN}"] if compiler else []), *UP_TO_COMPILE, *overrides]
    return run_pipeline(store, *args, env={**ENV, **(env or {})})


def tree(store: Path, run) -> Path:
    return store / "trees" / run.stage("compile")["digest"]


def record(store: Path, run) -> dict:
    return json.loads((store / "ac" / f"{run.stage('compile')['key']}.json").read_text())


def test_ai100_16c_compile_tree(store):
    r = ai100(store)
    st = r.status()
    assert r.rc == 0 and st["compile"] == "ran", r.out + r.err
    assert list(st) == ["load", "transform", "export", "rewrite", "compile"]
    # The CPU program attends with GroupQueryAttention; the AI 100 graph is the scatter one, which a
    # CPU build with hw.attention=scatter shares, and the AI 100 presets' rewrites (CustomRMSNorm) too.
    assert st["load"] == "cached" and st["export"] == "ran", st
    cpu = run_pipeline(store, "hw.attention=scatter", *UP_TO_COMPILE)
    assert cpu.status()["export"] == "cached" and cpu.status()["rewrite"] == "ran", cpu.status()
    cpu = run_pipeline(store, "hw.attention=scatter", "rewrite.rules=[optimize,rms_norm]", *UP_TO_COMPILE)
    assert cpu.status()["export"] == cpu.status()["rewrite"] == "cached", cpu.status()
    rewritten = onnx.load(str(tree(store, r) / "model.onnx"), load_external_data=False)
    assert {f.name for f in rewritten.functions} >= {"CustomRMSNorm"}
    t = tree(store, r)
    files = {p.relative_to(t).as_posix() for p in t.rglob("*") if p.is_file()}
    assert files == {"model.onnx", "model.onnx.data", "io.json", "specializations.json", "custom_io.yaml",
                     "compile.sh", "compile.json", "program.json", "qpc/programqpc.bin"}, files
    assert json.loads((t / "specializations.json").read_text()) == {"specializations": [
        {"batch_size": "1", "seq_len": "32", "ctx_len": "256"},
        {"batch_size": "1", "seq_len": "1", "ctx_len": "256"}]}
    io = yaml.safe_load((t / "custom_io.yaml").read_text())
    assert io == [{"IOName": n, "Precision": "float16"} for n in KV + [f"{n}_RetainedState" for n in KV]]
    options = ("-aic-hw -aic-hw-version=ai100 -m=model.onnx -retained-state -convert-to-fp16 -aic-num-cores=16 "
               "-mxfp6-matmul -network-specialization-config=specializations.json "
               "-custom-IO-list-file=custom_io.yaml -aic-binary-dir=qpc")
    script = (t / "compile.sh").read_text()
    assert script.startswith("#!/bin/sh\n") and 'cd "$(dirname "$0")"\n' in script
    assert script.endswith(f'exec "${{QAIC_COMPILER:-/opt/qti-aic/exec/qaic-compile}}" {options}\n')
    program = json.loads((t / "qpc" / "programqpc.bin").read_text())  # what the stand-in was given
    assert program["argv"] == options.split()
    assert [dict(s) for s in program["specializations"]] == [
        {"batch_size": "1", "seq_len": "32", "ctx_len": "256"}, {"batch_size": "1", "seq_len": "1", "ctx_len": "256"}]
    result = record(store, r)["result"]
    assert result["command"] == f"{STANDIN} {options}" and result["dry_run"] is False
    assert result["compiler_version"] == "sha256:" + hashlib.sha256(STANDIN.read_bytes()).hexdigest()
    assert "wrote qpc/programqpc.bin" in result["output_tail"] and result["seconds"] > 0
    assert "qaic-compile: standin-qaic-compile: wrote qpc/programqpc.bin" in r.out  # streamed
    again = ai100(store)
    assert again.status()["compile"] == "cached" and again.stage("compile")["digest"] == r.stage("compile")["digest"]


def test_four_devices_tensor_slicing(store):
    r = ai100(store, hw="ai100_4x16c")
    assert r.status()["compile"] == "ran", r.out + r.err
    t = tree(store, r)
    assert json.loads((t / "mdp_ts_4.json").read_text()) == {
        "connections": [{"devices": [0, 1, 2, 3], "type": "p2p"}],
        "partitions": [{"name": "Partition0", "devices": [{"deviceId": d, "numCores": 16} for d in range(4)]}]}
    assert " -mdp-load-partition-config=mdp_ts_4.json " in (t / "compile.sh").read_text()
    assert json.loads((t / "qpc" / "programqpc.bin").read_text())["devices"] == 4


def test_mxint8_kv_and_named_specializations(store):
    r = ai100(store, "hw.kv_cache_dtype=mxint8", "hw.specialization_format=named", "hw.mxfp6_matmul=false",
              "hw.mos=1", "hw.ols=2", "hw.aic_enable_depth_first=true")
    assert r.status()["compile"] == "ran", r.out + r.err
    t = tree(store, r)
    io = yaml.safe_load((t / "custom_io.yaml").read_text())
    assert {e["Precision"] for e in io} == {"mxint8"} and len(io) == 8
    assert json.loads((t / "specializations.json").read_text()) == {"specializations": [
        {"name": "Prefill", "symbols": {"batch_size": "1", "seq_len": "32", "ctx_len": "256"}},
        {"name": "Decode", "symbols": {"batch_size": "1", "seq_len": "1", "ctx_len": "256"}}]}
    argv = json.loads((t / "qpc" / "programqpc.bin").read_text())["argv"]
    assert "-mxfp6-matmul" not in argv
    assert argv[5:9] == ["-aic-num-cores=16", "-mos=1", "-ols=2", "-aic-enable-depth-first"]


def test_compiler_failure_exits_1_and_caches_nothing(store):
    r = ai100(store, env={"STANDIN_QAIC_FAIL": "1"})
    assert r.rc == 1, r.out + r.err
    st = r.stage("compile")
    assert st["status"] == "failed"
    assert st["error"].startswith("compile: qaic-compile failed with exit code 3: ") and str(STANDIN) in st["error"]
    assert "STANDIN_QAIC_FAIL=1 (a simulated compiler failure)" in (r.run_dir / "compile.error.txt").read_text()
    assert not (store / "ac" / f"{st['key']}.json").exists()
    again = ai100(store)
    assert again.status()["compile"] == "ran", again.out + again.err


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_compile_timeout_kills_the_process_group(store, tmp_path):
    pidfile = tmp_path / "pids"
    r = ai100(store, "hw.compile_timeout_s=2", env={"STANDIN_QAIC_SLEEP": "30", "STANDIN_QAIC_PIDFILE": str(pidfile)})
    assert r.rc == 1, r.out + r.err
    st = r.stage("compile")
    assert st["status"] == "failed" and st["error"].startswith("compile: qaic-compile timed out after 2 s: ")
    assert st["seconds"] < 10, st["seconds"]  # stopped at 2 s, not after the stand-in's 30
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2  # the stand-in and its child, one process group
    time.sleep(0.5)
    assert not [p for p in pids if _alive(p)]
    assert not (store / "ac" / f"{st['key']}.json").exists()


@pytest.mark.skipif(SDK_PRESENT, reason="an AI 100 SDK compiler is installed on this machine")
def test_missing_compiler_is_bad_input_and_builds_nothing(store):
    before = store_snapshot(store)
    start = time.monotonic()
    r = ai100(store, compiler=False)
    assert r.rc == 2 and time.monotonic() - start < 30
    assert r.err.strip().splitlines() == [
        "error: hw.compiler: no Cloud AI 100 compiler found (looked for /opt/qti-aic/exec/qaic-compile, "
        "/opt/qti-aic/exec/qaic-exec); allowed: hw.compiler=<path to qaic-compile>, or compile.dry_run=true "
        "to write the compile plan only"]
    assert store_snapshot(store) == before
    r = ai100(store, "hw.compiler=/nowhere/qaic-compile", compiler=False)
    assert r.rc == 2 and "(looked for /nowhere/qaic-compile)" in r.err
    assert store_snapshot(store) == before


@pytest.mark.parametrize("override, message", [
    ("hw.kv_cache_dtype=int4", "hw.kv_cache_dtype: 'int4' is not allowed; allowed: float16 | mxint8 | bfloat16"),
    ("hw.specialization_format=xml", "hw.specialization_format: 'xml' is not allowed; allowed: flat | named"),
    ("hw.num_devices=0", "hw.num_devices: 0 is not allowed; allowed: an integer >= 1"),
    ("hw.num_cores=17", "hw.num_cores: 17 is not allowed; allowed: 1..16"),
    ("hw.extra_options={bad-key: 1}", "hw.extra_options: 'bad-key' is not allowed; allowed: option names that are identifiers"),
])
def test_bad_ai100_values(empty_store, override, message):
    r = ai100(empty_store, override)
    assert r.rc == 2 and len(r.err.strip().splitlines()) == 1 and r.err.startswith(f"error: {message}"), r.err
    assert store_snapshot(empty_store) == set()


def test_dry_run_writes_a_compile_script_that_runs_elsewhere(store, tmp_path):
    r = ai100(store, "compile.dry_run=true", compiler=False)
    assert r.status()["compile"] == "ran", r.out + r.err
    t = tree(store, r)
    assert not (t / "qpc").exists() and (t / "compile.sh").is_file() and (t / "model.onnx").is_file()
    assert json.loads((t / "compile.json").read_text())["dry_run"] is True
    result = record(store, r)["result"]
    assert result["dry_run"] is True and result["compiler_version"] == "none"
    assert result["command"].startswith("/opt/qti-aic/exec/qaic-compile -aic-hw ")
    copy = tmp_path / "compile-copy"
    subprocess.run(["cp", "-rL", str(t), str(copy)], check=True)
    for dirpath, _dirs, _files in os.walk(copy):  # the store's folders are read-only: chmod -R u+w
        os.chmod(dirpath, 0o755)
    assert os.stat(t / "compile.sh").st_mode & 0o777 == 0o555  # executable, and still read-only
    p = subprocess.run(["./compile-copy/compile.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, **ENV, "QAIC_COMPILER": str(STANDIN)})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "standin-qaic-compile: wrote qpc/programqpc.bin" in p.stdout
    assert (copy / "qpc" / "programqpc.bin").is_file()


def test_sweep_over_cores_exports_once_and_compiles_three_times(empty_store, tmp_path):
    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "pipeline", "-m", "model=tiny_llama", f"store.root={empty_store}",
            f"hydra.sweep.dir={sweep}", "hw=ai100_16c", f"hw.compiler={STANDIN}", "hw.num_cores=8,14,16", *UP_TO_COMPILE]
    p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **ENV})
    assert p.returncode == 0, p.stdout + p.stderr
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in range(3)]
    stages = [{s["name"]: s for s in x["stages"]} for x in summaries]
    assert [s["export"]["status"] for s in stages] == ["ran", "cached", "cached"], p.stdout + p.stderr
    assert [s["compile"]["status"] for s in stages] == ["ran"] * 3
    assert len({s["compile"]["digest"] for s in stages}) == 3
    for cores, s in zip((8, 14, 16), stages):
        argv = json.loads((empty_store / "trees" / s["compile"]["digest"] / "qpc" / "programqpc.bin").read_text())["argv"]
        assert f"-aic-num-cores={cores}" in argv


GRAPH_VARIANTS = "batch_index" in (ROOT / "passes" / "export.py").read_text()
NO_VARIANTS = "the export has no continuous-batching/speculative graph variants yet (no batch_index in passes/export.py)"


@pytest.mark.skipif(not GRAPH_VARIANTS, reason=NO_VARIANTS)
def test_continuous_batching_compile(store):
    r = ai100(store, "compile.full_batch_size=4")
    assert r.status()["compile"] == "ran", r.out + r.err
    t = tree(store, r)
    assert json.loads((t / "specializations.json").read_text())["specializations"] == [
        {"batch_size": "1", "seq_len": "32", "ctx_len": "256", "full_batch_size": "4"},
        {"batch_size": "4", "seq_len": "1", "ctx_len": "256", "full_batch_size": "4"}]
    assert "batch_index" in json.loads((t / "qpc" / "programqpc.bin").read_text())["inputs"]


@pytest.mark.skipif(not GRAPH_VARIANTS, reason=NO_VARIANTS)
def test_speculative_target_compile_with_a_list_of_k(store):
    r = ai100(store, "compile.num_speculative_tokens=[2,4]", "hw.specialization_format=named")
    assert r.status()["compile"] == "ran", r.out + r.err
    specs = json.loads((tree(store, r) / "specializations.json").read_text())["specializations"]
    assert [(s["name"], s["symbols"]["seq_len"], s["symbols"]["num_logits_to_keep"]) for s in specs] == [
        ("Prefill", "32", "1"), ("Decode", "3", "3"), ("Decode_K4", "5", "5")]


# ---- the pass's pieces, without the CLI
def _params(**kw) -> c.CompileAi100Params:
    return c.CompileAi100Params(**kw)


def test_extra_options_mapping_and_qaic_exec():
    p = _params(extra_options={"sub_functions": False, "allow_mxint8_mdp_io": True, "some_level": 3},
                compiler_kind="qaic-exec")
    opts = plan.compiler_options(p)
    assert opts[-3:] == ["-allow-mxint8-mdp-io", "-some-level=3", "-compile-only"]
    assert not any(o.startswith("-sub-functions") for o in opts)
    assert 'exec "${QAIC_COMPILER:-/opt/qti-aic/exec/qaic-exec}" ' in plan.script_text(p)


def _fake_sdk(root: Path, name: str = "qaic-compile", versions: bool = True) -> Path:
    exe = root / "exec" / name
    exe.parent.mkdir(parents=True)
    shutil.copy(STANDIN, exe)
    exe.chmod(0o755)
    if versions:
        (root / "versions").mkdir()
        (root / "versions" / "apps.xml").write_text(
            "<image_info><build_id><base_version>1.20.0</base_version><build_id>55</build_id></build_id></image_info>")
        (root / "versions" / "platform.xml").write_text("<image_info><base_version>1.20.1</base_version></image_info>")
    return exe


def test_resolve_reads_the_sdk_versions_next_to_the_compiler(tmp_path):
    exe = _fake_sdk(tmp_path / "sdk")
    p = c.resolve(_params(compiler=str(exe)))
    assert (p.compiler, p.compiler_version, p.compiler_kind) == (str(exe), "apps 1.20.0.55; platform 1.20.1", "qaic-compile")
    bare = _fake_sdk(tmp_path / "other", "qaic-exec", versions=False)
    p = c.resolve(_params(compiler=str(bare)))
    assert p.compiler_version == "sha256:" + hashlib.sha256(bare.read_bytes()).hexdigest() and p.compiler_kind == "qaic-exec"
    assert c.resolve(_params(compiler=str(exe), dry_run=True)).compiler_version == "none"
    assert c.resolve(_params(compiler="/nowhere/qaic-exec", dry_run=True)).compiler_kind == "qaic-exec"
    c.check(_params(compiler=str(exe)))  # found: no error
    with pytest.raises(c.UserError, match="looked for /nowhere/qaic-compile"):
        c.check(_params(compiler="/nowhere/qaic-compile"))
    not_executable = tmp_path / "qaic-compile"
    not_executable.write_text("")
    with pytest.raises(c.UserError, match="no Cloud AI 100 compiler found"):
        c.check(_params(compiler=str(not_executable)))


def test_the_key_holds_the_compiler_version_not_its_path():
    from pipeline.keys import canonical_params
    from pipeline.store.memo import DigestMemo

    p = _params(compiler="/a/qaic-compile", compiler_version="apps 1.20.0.55", compiler_kind="qaic-compile")
    keyed, _ = canonical_params(p, DigestMemo(None))
    assert "hw.compiler" not in keyed and "hw.compile_timeout_s" not in keyed
    assert keyed["compiler_version"] == "apps 1.20.0.55"
    moved, _ = canonical_params(dataclasses.replace(p, compiler="/b/qaic-compile"), DigestMemo(None))
    assert moved == keyed
