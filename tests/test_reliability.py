"""Bad paths and damaged bytes: refused in one line, or detected, rebuilt and never served."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from conftest import ROOT, run_pipeline, store_snapshot


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
    v = subprocess.run([sys.executable, "-m", "pipeline.store", "--root", str(store), "verify"], cwd=ROOT,
                       capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
    # the copy made before the damage still runs
    p = subprocess.run([*run[:3], str(copy), *run[4:]], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
