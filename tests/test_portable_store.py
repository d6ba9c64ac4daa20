"""Records mean the same on every machine: a store copied elsewhere with new mtimes hits on every stage."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, run_pipeline

STAGES = ["load", "transform", "export", "rewrite", "compile", "quantize", "package", "twin", "reference", "validate"]


def test_records_hold_digests_and_sizes_not_paths_or_mtimes(built_store):
    for path in (built_store / "ac").glob("*.json"):
        text = path.read_text()
        assert str(built_store) not in text and str(ROOT) not in text, path
        rec = json.loads(text)
        assert "locations" not in rec
        for entry in rec["files"].values():
            file_id, size = entry  # [content digest (+ ".x"), bytes]: nothing of this machine
            assert len(file_id.removesuffix(".x")) == 64 and isinstance(size, int)
    for path in (built_store / "index").rglob("*"):
        assert path.is_dir() or len(path.read_text()) == 64


def test_a_store_copied_with_new_mtimes_hits_every_stage(built_store, tmp_path):
    copy = tmp_path / "elsewhere" / "store"
    copy.parent.mkdir()
    time.sleep(0.01)
    # cp -r: new inodes, new mtimes, hard links broken; and no machine state (local/) on the way
    subprocess.run(["cp", "-r", str(built_store), str(copy)], check=True)
    subprocess.run(["chmod", "-R", "u+w", str(copy / "local")], check=True)
    subprocess.run(["rm", "-r", str(copy / "local")], check=True)
    now = time.time() + 100
    for dirpath, _dirs, files in os.walk(copy):
        for name in files:
            os.utime(os.path.join(dirpath, name), (now, now), follow_symlinks=False)
    r = run_pipeline(copy)
    assert r.rc == 0, r.out + r.err
    assert r.status() == {name: "cached" for name in STAGES}
    assert r.summary["package"].startswith(str(copy))
    again = run_pipeline(copy)  # content was checked once; now the memo knows the files
    assert set(again.status().values()) == {"cached"}
    verify = subprocess.run([sys.executable, "-m", "pipeline.store", "--root", str(copy), "verify"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout
    # gc judges blobs by the records that list them, not by link counts (cp -r left none)
    gc = subprocess.run([sys.executable, "-m", "pipeline.store", "--root", str(copy), "gc", "--max-size", "100G",
                         "--keep-recent", "0s"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert gc.returncode == 0 and "removed 0 records, 0 trees, 0 blobs" in gc.stdout, gc.stdout


def test_the_digest_memo_stays_on_local_disk(tmp_path, monkeypatch):
    from pipeline.store.memo import default_memo_path, filesystem_type

    mountinfo = ("22 1 8:1 / / rw,relatime - ext4 /dev/vda rw\n"
                 "90 22 0:50 / /mnt/shared rw,relatime - nfs4 server:/export rw,vers=4.2\n")
    assert filesystem_type(Path("/mnt/shared/store/ac"), mountinfo) == "nfs4"
    assert filesystem_type(Path("/home/me/artifacts"), mountinfo) == "ext4"
    local = tmp_path / "artifacts"
    assert default_memo_path(local, "ext4") == local / "local" / "memo.sqlite"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    on_nfs = default_memo_path(Path("/mnt/shared/store"), "nfs4")
    assert on_nfs.parent == tmp_path / "cache" / "ai100-pipeline" and on_nfs.suffix == ".sqlite"
    assert default_memo_path(Path("/mnt/other/store"), "nfs4") != on_nfs  # one memo per store root
