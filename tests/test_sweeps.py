"""Sweeps in parallel (joblib, submitit's local executor) over one store, and their report: sweep.csv, sweep.md, sweep.png."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

from conftest import ROOT
from test_exit_codes import LAUNCHERS, ONE_FAILS, sweep

GRID = ("hw.num_cores=1,2", "shape=p32_c256,p128_c512")
REPORT = ("sweep.csv", "sweep.md", "sweep.png")


def records(store, pass_name: str) -> list[dict]:
    found = [json.loads(p.read_text()) for p in (store / "ac").glob("*.json")]
    return [r for r in found if r.get("pass") == pass_name]


def rows(sweep_dir) -> list[dict]:
    with open(sweep_dir / "sweep.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_2x2_joblib_sweep_builds_each_key_once_and_reports(empty_store, tmp_path):
    p = sweep(empty_store, tmp_path / "sweep", *LAUNCHERS["joblib"], *GRID, "pipeline.benchmark=true",
              "benchmark.repeats=1", "benchmark.generation_len=4")
    assert p.returncode == 0, p.stdout + p.stderr
    assert len(records(empty_store, "export")) == 1 and len(records(empty_store, "compile_ort")) == 4
    assert len(records(empty_store, "load")) == 1
    assert all((tmp_path / "sweep" / f).is_file() for f in REPORT)
    assert (tmp_path / "sweep" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = rows(tmp_path / "sweep")
    assert sorted((r["hw.num_cores"], r["shape"]) for r in table) == [
        ("1", "p128_c512"), ("1", "p32_c256"), ("2", "p128_c512"), ("2", "p32_c256")]
    assert all(r["validation"] == "passed" and r["exit_code"] == "0" and float(r["decode tok/s"]) > 0
               and float(r["TTFT ms"]) > 0 and float(r["compile s"]) > 0 and float(r["package MB"]) > 0 for r in table)
    assert sum(r["transform"] == "ran" for r in table) == 1  # the in-memory transform too, once
    md = (tmp_path / "sweep" / "sweep.md").read_text()
    assert md.startswith("# Sweep: 4 points, 4 passed, 0 failed") and "sweep.png: decode tok/s" in md

    again = sweep(empty_store, tmp_path / "again", *LAUNCHERS["joblib"], *GRID, "pipeline.benchmark=true",
                  "benchmark.repeats=1", "benchmark.generation_len=4")
    assert again.returncode == 0, again.stdout + again.stderr
    assert {status for r in rows(tmp_path / "again") for stage, status in r.items()
            if stage in ("load", "transform", "export", "rewrite", "compile", "package", "validate", "benchmark")} == {"cached"}
    # cached compiles report what they took to build
    assert [r["compile s"] for r in rows(tmp_path / "again")] == [r["compile s"] for r in table]


def test_a_sweep_through_the_submitit_local_executor(store, tmp_path):
    p = sweep(store, tmp_path / "sweep", "hydra/launcher=submitit_local", "hw.num_cores=1,2")
    assert p.returncode == 0, p.stdout + p.stderr
    assert all((tmp_path / "sweep" / f).is_file() for f in REPORT)
    assert [r["hw.num_cores"] for r in rows(tmp_path / "sweep")] == ["1", "2"]
    assert "sweep report:" in p.stdout


def test_a_failed_point_is_marked_and_a_rerun_resumes(store, tmp_path):
    p = sweep(store, tmp_path / "sweep", *LAUNCHERS["joblib"], *ONE_FAILS)
    assert p.returncode == 1, p.stdout + p.stderr
    table = rows(tmp_path / "sweep")
    assert [(r["compile.ctx_len"], r["exit_code"], r["validate"]) for r in table] == [("16", "1", "failed"), ("32", "0", "ran")]
    assert table[0]["error"].startswith("validate:")
    md = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "1 passed, 1 failed" in md and "**0 FAILED**" in md
    # the picture is drawn whatever failed; the report can be rebuilt with other choices
    rebuilt = subprocess.run([sys.executable, "-m", "pipeline.report", str(tmp_path / "sweep"), "--metric", "package_mb"],
                             cwd=ROOT, capture_output=True, text=True)
    assert rebuilt.returncode == 1 and "2 points, 1 failed" in rebuilt.stdout, rebuilt.stderr
    # the same sweep again: the finished point is all hits, the failed one fails again
    again = sweep(store, tmp_path / "again", *LAUNCHERS["joblib"], *ONE_FAILS)
    assert again.returncode == 1
    second = rows(tmp_path / "again")[1]
    assert second["compile"] == second["validate"] == "cached"


def test_report_choices_are_checked_before_the_sweep_starts(store, tmp_path):
    p = sweep(store, tmp_path / "sweep", "hw.num_cores=1,2", "sweep.x=compile.ctx_len")
    assert p.returncode == 2
    assert p.stderr.strip() == "error: sweep.x: 'compile.ctx_len' is not allowed; allowed: a swept key (hw.num_cores)"
    assert not (tmp_path / "sweep").exists()
    bad = sweep(store, tmp_path / "sweep", "hw.num_cores=1,2", "sweep.metric=speed")
    assert bad.returncode == 2 and "sweep.metric: 'speed' is not allowed; allowed: decode_tok_s | " in bad.stderr
    empty = subprocess.run([sys.executable, "-m", "pipeline.report", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert empty.returncode == 2 and "holds no sweep jobs" in empty.stderr


def test_a_store_on_nfs_without_shared_locks_is_refused():
    from pathlib import Path

    from pipeline.store.memo import lock_problem

    mountinfo = ("22 1 8:1 / / rw,relatime - ext4 /dev/vda rw\n"
                 "90 22 0:50 / /mnt/shared rw,relatime - nfs4 server:/export rw,vers=4.2\n"
                 "91 22 0:51 / /mnt/local rw,relatime - nfs server:/other rw,vers=3,nolock\n"
                 "92 22 0:52 / /mnt/flock rw,relatime - nfs4 server:/third rw,vers=4.1,local_lock=flock\n")
    assert lock_problem(Path("/home/me/artifacts"), mountinfo) is None
    assert lock_problem(Path("/mnt/shared/store"), mountinfo) is None  # NFSv4 locks are seen by every client
    assert "mounted with nolock" in lock_problem(Path("/mnt/local/store"), mountinfo)
    assert lock_problem(Path("/mnt/flock/store"), mountinfo).startswith(
        "store.root: '/mnt/flock/store' is on NFS mounted with local_lock=flock")


def test_a_sweep_over_weight_precision_reports_speed_size_and_perplexity_ratio(store, tmp_path):
    p = sweep(store, tmp_path / "sweep", "quantize.weights=null,int8,int4", "pipeline.benchmark=true",
              "benchmark.repeats=1", "benchmark.generation_len=4")
    assert p.returncode == 0, p.stdout + p.stderr
    table = {r["quantize.weights"]: r for r in rows(tmp_path / "sweep")}
    assert set(table) == {"null", "int8", "int4"} and all(float(r["decode tok/s"]) > 0 for r in table.values())
    size = {w: float(r["package MB"]) for w, r in table.items()}
    assert size["int4"] < size["int8"] < size["null"], size
    assert table["null"]["ppl ratio"] == ""  # lossless: checked exactly, no ratio
    assert all(1 - 1e-3 < float(table[w]["ppl ratio"]) <= 1.45 for w in ("int8", "int4")), table
