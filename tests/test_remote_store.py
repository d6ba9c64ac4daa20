"""The store's remote tier (store.remote): a folder and a real S3 server (SeaweedFS, started here) through s3fs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, S3_SECRET as SECRET, run_pipeline
from test_build import CACHED_PROBE


def stages(run) -> dict[str, tuple[str, str | None]]:
    return {s["name"]: (s["status"], s.get("source")) for s in run.summary["stages"]}


def test_a_folder_remote_shared_by_two_stores_builds_each_key_once(tmp_path, built_store):
    remote = tmp_path / "remote"
    a = run_pipeline(tmp_path / "a", f"store.remote={remote}", "store.push=true")
    assert a.rc == 0, a.err
    pushed = sorted(p.relative_to(remote) for p in remote.rglob("*") if p.is_file())
    assert len([p for p in pushed if p.parts[0] == "ac"]) == 9  # every materialized stage (not the in-memory transform)
    assert not [p for p in pushed if ".part-" in p.name]

    # a cold store: every stage is a hit from the remote, nothing is built, no heavy library imported
    run_dir = tmp_path / "b-run"
    p = subprocess.run([sys.executable, "-c", CACHED_PROBE, "model=tiny_llama", f"store.root={tmp_path / 'b'}",
                        f"store.remote={remote}", f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    probe = json.loads(p.stdout.split("PROBE", 1)[1])
    assert probe == {"code": 0, "heavy": []}, p.stdout + p.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {s["name"]: s["status"] for s in summary["stages"]} == {s["name"]: "cached" for s in summary["stages"]}
    assert {s.get("source") for s in summary["stages"] if s["name"] != "transform"} == {"remote"}
    assert summary["package"].startswith(str(tmp_path / "b"))
    assert f"export: cached (from {remote})" in p.stdout
    # read only: the cold store pushed nothing
    assert sorted(p.relative_to(remote) for p in remote.rglob("*") if p.is_file()) == pushed


def test_a_tampered_remote_blob_is_refused_and_built_here(tmp_path):
    remote = tmp_path / "remote"
    assert run_pipeline(tmp_path / "a", f"store.remote={remote}", "store.push=true").rc == 0
    record = json.loads(next((remote / "ac").glob("*.json")).read_text())
    records = [json.loads(p.read_text()) for p in (remote / "ac").glob("*.json")]
    compile_rec = next(r for r in records if r["stage"] == "compile")
    file_id, size = compile_rec["files"]["program.json"]
    blob = remote / "cas" / file_id[:2] / file_id
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[10] ^= 0xFF
    blob.write_bytes(bytes(data))
    b = run_pipeline(tmp_path / "b", f"store.remote={remote}")
    assert b.rc == 0, b.err
    assert b.stage("compile")["status"] == "ran" and "refused" in b.stage("compile")["note"]
    assert stages(b)["export"] == ("cached", "remote")
    assert record  # the remote still holds its records; nothing was overwritten by a reader


def test_an_s3_remote_through_s3fs(tmp_path, s3):
    env, fs = s3
    url = "s3://builds/ci"
    a = run_pipeline(tmp_path / "a", f"store.remote={url}", "store.push=true", env=env)
    assert a.rc == 0, a.err
    fs.invalidate_cache()
    uploaded = fs.find("builds/ci")
    assert len([p for p in uploaded if "/ac/" in p]) == 9
    again = run_pipeline(tmp_path / "a", f"store.remote={url}", "store.push=true", "hw.num_cores=1", env=env)
    fs.invalidate_cache()
    assert again.rc == 0 and len(fs.find("builds/ci")) > len(uploaded)  # the new compile, package, validate
    b = run_pipeline(tmp_path / "b", f"store.remote={url}", "hw.num_cores=1", env=env)
    assert b.rc == 0, b.err
    assert all(status == "cached" for status, _ in stages(b).values())
    assert stages(b)["compile"] == ("cached", "remote")
    # credentials come from the environment and are written nowhere
    for root in (tmp_path / "a", tmp_path / "b", *(r.run_dir for r in (a, again, b))):
        for path in Path(root).rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                assert SECRET.encode() not in path.read_bytes(), path
    fs.invalidate_cache()
    for key in fs.find("builds/ci"):
        if "/ac/" in key:
            assert SECRET not in fs.cat_file(key).decode()
    assert SECRET not in a.out + a.err + b.out + b.err


def test_a_bad_remote_is_one_line(tmp_path):
    r = run_pipeline(tmp_path / "a", "store.remote=nosuchproto://x/y")
    assert r.rc == 2
    assert r.err.strip().startswith("error: store.remote: 'nosuchproto://x/y' is not allowed here"), r.err
    assert not (tmp_path / "a").exists()
