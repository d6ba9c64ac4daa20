"""The store under stress: concurrent builders, crashes at exact points, damage, upkeep."""
from __future__ import annotations

import os
from pathlib import Path
import subprocess
import sys

import pytest

from conftest import ROOT, chmod_tree_writable, copy_store, run_pipeline


def store_cli(store, *args):
    return subprocess.run([sys.executable, "-m", "pipeline.store", "--root", str(store), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_four_concurrent_processes_build_each_key_once(tmp_path, built_store):
    store = tmp_path / "store"
    env = {**os.environ}
    procs = [
        subprocess.Popen([sys.executable, "-m", "pipeline", "model=tiny_llama", f"store.root={store}",
                          f"hydra.run.dir={tmp_path / f'run{i}'}", "hw.num_cores=3"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for i in range(4)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    import json

    summaries = [json.loads((tmp_path / f"run{i}" / "summary.json").read_text()) for i in range(4)]
    for stage in ("load", "export", "rewrite", "compile", "package", "reference", "validate"):
        statuses = [next(s["status"] for s in sm["stages"] if s["name"] == stage) for sm in summaries]
        assert statuses.count("ran") == 1, (stage, statuses)
    assert len({sm["package"] for sm in summaries}) == 1
    assert store_cli(store, "verify").returncode == 0


FAULTS = [
    ("load", "after_blobs"),
    ("export", "before_run"),
    ("export", "after_run"),
    ("export", "after_blobs"),
    ("export", "after_tree"),
    ("package", "after_tree"),
    ("validate", "after_run"),
]


def store_up_to_export(built_store: Path, dst: Path) -> Path:
    """A copy of the built store that keeps only the records of load and reference (what every
    stage from export on starts from); the blobs stay, as a store that built before has them."""
    import json

    copy_store(built_store, dst)
    for rec in (dst / "ac").glob("*.json"):
        if json.loads(rec.read_text())["stage"] not in ("load", "reference"):
            rec.unlink()
    return dst


@pytest.mark.parametrize("stage,point", FAULTS)
def test_killed_build_leaves_a_store_the_next_run_completes(empty_store, built_store, stage, point):
    if stage != "load":  # start where the stage is next to build (the load stage alone from nothing)
        empty_store = store_up_to_export(built_store, empty_store)
    killed = run_pipeline(empty_store, env={"PIPELINE_FAULT": f"{stage}:{point}"})
    assert killed.rc == -9, killed.out + killed.err
    ac = empty_store / "ac"
    if ac.exists():  # no record of the killed stage: a record that exists is complete
        import json

        assert all(json.loads(p.read_text())["stage"] != stage for p in ac.glob("*.json"))
    r = run_pipeline(empty_store)
    assert r.rc == 0, r.out + r.err
    assert r.status()[stage] == "ran"
    assert r.summary["validation"]["passed"]
    assert store_cli(empty_store, "verify").returncode == 0


def test_damaged_tree_is_rebuilt_not_served(store):
    first = run_pipeline(store)
    pkg = first.summary["package"]
    manifest = os.path.join(pkg, "manifest.json")
    chmod_tree_writable(pkg)
    os.chmod(manifest, 0o644)
    with open(manifest, "a") as f:
        f.write(" ")
    r = run_pipeline(store)
    assert r.rc == 0, r.out + r.err
    assert r.status()["package"] == "ran"
    assert "missing or damaged" in r.stage("package")["why"]
    assert r.summary["package"] == pkg  # the same bytes again, put back in place
    assert store_cli(store, "verify").returncode == 0


def test_identical_files_are_stored_once(store):
    r = run_pipeline(store)
    pkg = r.summary["package"]
    weights = [os.path.join(dp, f) for dp, _d, fs in os.walk(pkg) for f in fs if os.path.getsize(os.path.join(dp, f)) > 1_000_000]
    assert weights
    compiled = Path(store / "trees" / next(s["digest"] for s in r.summary["stages"] if s["name"] == "compile"))
    assert any(w.endswith(".onnx.data") for w in weights)
    for w in weights:
        if w.endswith(".onnx.data"):
            # the compile stage's tree links its blob in cas/; the package's copy is its own (one
            # link: the onnx library refuses external data with more)
            assert os.stat(compiled / os.path.relpath(w, pkg)).st_nlink >= 2 and os.stat(w).st_nlink == 1
        else:  # the tokenizer: the checkpoint's blob, linked, not copied
            assert os.stat(w).st_nlink >= 3


def test_store_ls_verify_gc(store):
    ls = store_cli(store, "ls")
    assert ls.returncode == 0 and "tiny_llama" in ls.stdout and "compile" in ls.stdout
    assert store_cli(store, "verify").stdout.strip().endswith("0 problems")
    kept = store_cli(store, "gc", "--max-size", "0")  # every record is recent: nothing goes
    assert kept.returncode == 0 and "removed 0 records" in kept.stdout
    gone = store_cli(store, "gc", "--max-size", "0", "--keep-recent", "0s")
    assert gone.returncode == 0 and "removed 0 records" not in gone.stdout
    assert not list((store / "trees").iterdir()) and not list((store / "cas").glob("*/*"))
    r = run_pipeline(store)
    assert r.rc == 0 and r.status()["export"] == "ran"


def _digest_twenty_times(args):
    from pipeline.store.memo import DigestMemo

    db, file = args
    memo = DigestMemo(Path(db))
    try:
        return {memo.file(Path(file)) for _ in range(20)}
    finally:
        memo.close()


def test_processes_opening_a_new_digest_memo_at_once_all_get_the_digest(tmp_path):
    """SQLite's busy timeout does not cover switching a new database to WAL: 16 processes racing on a
    fresh memo once failed a parallel sweep with "database is locked". The memo is a cache: it retries,
    and never fails a build."""
    import multiprocessing

    from pipeline.store.digests import hash_file

    for trial in range(10):
        folder = tmp_path / str(trial)
        folder.mkdir()
        (folder / "weights").write_bytes(os.urandom(4096))
        with multiprocessing.get_context("fork").Pool(8) as pool:
            found = pool.map(_digest_twenty_times, [(str(folder / "local" / "memo.sqlite"), str(folder / "weights"))] * 16)
        assert set().union(*found) == {hash_file(folder / "weights")}
