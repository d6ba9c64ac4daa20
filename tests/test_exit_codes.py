"""Exit codes of runs and sweeps under each launcher, decided in the launching process from the jobs' summaries."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, store_snapshot

# 5 prompt tokens + 12 new ones do not fit a 16-slot cache: validate fails at ctx_len 16, passes at 32.
ONE_FAILS = ("compile.ctx_len=16,32", "compile.prefill_seq_len=8", "validate.max_new_tokens=12")
LAUNCHERS = {"basic": (), "joblib": ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")}


def sweep(store, sweep_dir, *overrides, timeout=900):
    args = [sys.executable, "-m", "pipeline", "-m", "model=tiny_llama", f"store.root={store}",
            f"hydra.sweep.dir={sweep_dir}", *overrides]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def job_codes(sweep_dir) -> list[int]:
    return [json.loads((sweep_dir / str(i) / "summary.json").read_text())["exit_code"] for i in range(2)]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_failing_job_makes_the_sweep_exit_1(store, tmp_path, launcher):
    p = sweep(store, tmp_path / "sweep", *LAUNCHERS[launcher], *ONE_FAILS)
    assert p.returncode == 1, p.stdout + p.stderr
    assert job_codes(tmp_path / "sweep") == [1, 0]
    first = json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())
    assert {s["name"]: s["status"] for s in first["stages"]}["validate"] == "failed"


def test_a_joblib_sweep_that_succeeds_exits_0(store, tmp_path):
    p = sweep(store, tmp_path / "sweep", *LAUNCHERS["joblib"], "hw.num_cores=1,2")
    assert p.returncode == 0, p.stdout + p.stderr
    assert job_codes(tmp_path / "sweep") == [0, 0]


def test_bad_input_in_any_point_stops_the_sweep_before_it_starts(store, tmp_path):
    before = store_snapshot(store)
    p = sweep(store, tmp_path / "sweep", *LAUNCHERS["joblib"], "hw.num_cores=2,0")
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: hw.num_cores: 0 is not allowed; allowed: an integer >= 1 (sweep point: model=tiny_llama "
        f"store.root={store} hydra.sweep.dir={tmp_path / 'sweep'} hydra/launcher=joblib hydra.launcher.n_jobs=2 "
        "hw.num_cores=0)"]
    assert not (tmp_path / "sweep").exists() and store_snapshot(store) == before


def test_bad_input_found_by_a_job_makes_the_sweep_exit_2(empty_store, tmp_path):
    # The hub is unreachable here: each job finds it while resolving the revision (not checked up front).
    p = sweep(empty_store, tmp_path / "sweep", *LAUNCHERS["joblib"], "model=llama3", "hw.num_cores=1,2", timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    assert job_codes(tmp_path / "sweep") == [2, 2]
    assert "model.hf_id: 'meta-llama/Meta-Llama-3-8B'" in p.stderr


def test_a_large_sweep_says_it_checked_a_sample(tmp_path):
    from pipeline.precheck import MAX_SWEEP_CHECKS, precheck_overrides

    notes = []
    cores, ctx = range(1, 10), range(64, 64 + 9 * 32, 32)  # 81 points
    argv = ["-m", "model=tiny_llama", f"hw.num_cores={','.join(map(str, cores))}", f"compile.ctx_len={','.join(map(str, ctx))}"]
    assert MAX_SWEEP_CHECKS < 81
    assert precheck_overrides(argv, note=notes.append) is None
    assert notes == [f"note: checked {MAX_SWEEP_CHECKS} of 81 combinations before launching "
                     "(every value of every swept key at least once); each job checks its own and exits 2 on bad input"]
    # a bad value is among those every sample holds
    bad = argv[:-1] + [f"compile.ctx_len={','.join(map(str, ctx))},100000"]
    assert precheck_overrides(bad, note=notes.append).startswith("compile.ctx_len: 100000 is not allowed; allowed: 1..512")
