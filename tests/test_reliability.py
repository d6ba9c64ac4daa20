"""Bad paths, damaged bytes and a full disk: refused in one line, or detected, rebuilt and never served."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import ROOT, run_pipeline, store_snapshot
from test_store import store_cli


def last_line(r) -> str:
    return r.err.strip().splitlines()[-1]


def test_a_path_the_source_does_not_read_or_a_config_that_is_not_one_is_refused(empty_store):
    for override, message in (("model.path=../../etc", "error: model.path: '../../etc' is not allowed for source=random"),
                              ("model.hf_config=${oc.env:HOME}", "error: model.hf_config: ")):
        r = run_pipeline(empty_store, override)
        assert r.rc == 2 and last_line(r).startswith(message) and "Traceback" not in r.err, r.err
        assert "HYDRA_FULL_ERROR" not in r.err
    assert not [p for p in store_snapshot(empty_store) if p.startswith(("trees", "cas", "records"))]


def _load_tree(store):
    return next(p.parent for p in (store / "trees").glob("*/config.json"))


def test_a_model_folder_holding_a_link_is_refused_naming_it(store, tmp_path):
    folder = tmp_path / "model"
    subprocess.run(["cp", "-r", str(_load_tree(store)), str(folder)], check=True)
    os.chmod(folder, 0o755)
    (folder / "notes").symlink_to("/etc/hostname")
    before = store_snapshot(store)
    r = run_pipeline(store, "model.source=local", f"model.path={folder}", "model.hf_config={}", "model.tokenizer=null")
    assert r.rc == 2 and last_line(r).startswith(f"error: model.path: '{folder}' is not allowed ({folder}/notes: a symbolic "
                                                 "link"), r.err
    assert store_snapshot(store) == before


def _flip_a_byte_keeping_mtime(path) -> None:
    st = os.stat(path)
    os.chmod(path, st.st_mode | stat.S_IWUSR)
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0x55]))
    os.chmod(path, st.st_mode)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns


def test_a_byte_flipped_with_its_mtime_kept_is_rebuilt_never_served(store, tmp_path):
    r = run_pipeline(store)
    assert r.rc == 0 and set(r.status().values()) == {"cached"}
    package = r.summary["package"]
    manifest = json.loads(open(f"{package}/manifest.json").read())
    data = max(manifest["files"], key=lambda rel: manifest["files"][rel]["bytes"])
    want = manifest["files"][data]["sha256"]
    copy = tmp_path / "package-copy"
    subprocess.run(["cp", "-r", package, str(copy)], check=True)
    _flip_a_byte_keeping_mtime(f"{package}/{data}")

    # the runtime checks a package against its manifest before loading it
    run = [sys.executable, "-m", "runtime", package, "--prompt", "Hi", "--max-new-tokens", "2"]
    p = subprocess.run(run, cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == \
        f"error: {package}: damaged: {data}: its sha256 differs from the manifest's; rebuild it (or fetch it again)"
    # a cached run sees the damage (the file's ctime moved), rebuilds what held it, and validates
    r = run_pipeline(store)
    assert r.rc == 0 and r.status()["package"] == "ran" and r.summary["validation"]["passed"], r.out + r.err
    from runtime.package_format import damaged_files

    assert damaged_files(r.summary["package"]) == [] and json.loads(
        open(f"{r.summary['package']}/manifest.json").read())["files"][data]["sha256"] == want
    v = store_cli(store, "verify")
    assert v.returncode == 0, v.stdout + v.stderr
    # the copy made before the damage still runs
    p = subprocess.run([*run[:3], str(copy), *run[4:]], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def _rot_a_byte(store, path) -> str:
    """Damage no write made (bit rot under the filesystem): the bytes change, the digest memo's
    (inode, size, mtime, ctime) row still vouches for the old content. The relative path."""
    from pipeline.store.memo import DigestMemo

    memo = DigestMemo(store / "local" / "memo.sqlite")
    before = memo.file(path)
    _flip_a_byte_keeping_mtime(path)
    memo.note(path, before)
    assert memo.file(path) == before  # the memo cannot see it
    memo.close()


def _largest(package: str) -> str:
    files = json.loads(open(f"{package}/manifest.json").read())["files"]
    return max(files, key=lambda rel: files[rel]["bytes"])


def test_damage_no_write_made_is_found_on_use_and_rebuilt_never_served(store):
    from conftest import infer

    good = infer(store, "prompts=[Hello]", "generation_len=8")
    assert good.rc == 0, good.err
    package = good.summary["package"]
    data = _largest(package)
    _rot_a_byte(store, f"{package}/{data}")
    r = infer(store, "prompts=[Hello]", "generation_len=8")
    assert r.rc == 0, r.err
    assert (f"package: damaged in the store ({data}: its bytes differ from the record); set aside, rebuilding it and "
            "what shared its files") in r.err
    status = r.status()
    # the package's weights are its own copy (one link, for the onnx library): the compile stage's blob is intact
    assert status["package"] == "ran" and status["compile"] == "cached" and status["export"] == "cached", status
    assert r.exec_info["generated_ids"] == good.exec_info["generated_ids"]
    assert store_cli(store, "verify").returncode == 0


def test_verify_repair_evicts_damaged_trees_and_the_next_build_restores_them(store):
    r = run_pipeline(store)
    package = r.summary["package"]
    data = _largest(package)
    _rot_a_byte(store, f"{package}/{data}")
    v = store_cli(store, "verify")
    assert v.returncode == 1 and f"{data} does not match its digest" in v.stdout, v.stdout
    v = store_cli(store, "verify", "--repair")
    assert v.returncode == 1 and "verify: repaired: 1 damaged trees evicted" in v.stdout, v.stdout  # the package's own copy
    assert store_cli(store, "verify").returncode == 0
    r = run_pipeline(store)
    assert r.rc == 0 and r.status()["package"] == "ran" and r.summary["validation"]["passed"], r.err
    assert store_cli(store, "verify").returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 256 MiB tmpfs the test mounts (as root; skipped where mounting is not allowed)."""
    mount = tmp_path / "store"
    mount.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mount)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_store_whose_disk_fills_mid_export_fails_in_one_line_records_nothing_and_recovers(small_disk):
    from pipeline.instruments import fill_disk

    store, ballast = small_disk, small_disk / "ballast"  # another writer fills the disk as export starts
    r = run_pipeline(store, env={"PIPELINE_FAULT": f"export:before_run=fill:{ballast}"})
    assert r.rc == 1 and "Traceback" not in r.out + r.err, r.out + r.err
    failed = next(line for line in r.out.splitlines() if line.startswith("export: failed"))
    assert f"store.root: the filesystem of '{store}' is full (0.0 MiB free); nothing was recorded for this stage: free " \
           "space or move store.root, then run again (OSError: " in failed, failed
    records = [json.loads(p.read_text())["stage"] for p in (store / "ac").glob("*.json")]
    assert "export" not in records and "load" in records, records
    assert list((store / "tmp").iterdir()) == []  # the failed build's files are gone
    assert store_cli(store, "verify").returncode == 0

    ballast.unlink()  # space freed: the next run completes
    r = run_pipeline(store)
    assert r.rc == 0 and r.status()["load"] == "cached" and r.status()["export"] == "ran", r.out + r.err
    assert r.summary["validation"]["passed"]

    fill_disk(ballast)  # full again: what is built is still served; a new build fails as cleanly
    r = run_pipeline(store)
    assert r.rc == 0 and set(r.status().values()) == {"cached"}, r.out + r.err
    before = sorted(p.name for p in (store / "ac").iterdir())
    r = run_pipeline(store, "compile.ctx_len=96")
    assert r.rc == 1 and "is full" in r.out and "Traceback" not in r.out + r.err, r.out + r.err
    assert sorted(p.name for p in (store / "ac").iterdir()) == before and list((store / "tmp").iterdir()) == []
    ballast.unlink()
    assert store_cli(store, "verify").returncode == 0
