"""Publishing packages (python -m pipeline.publish) and fetching them (python -m pipeline.fetch): a folder and a real S3 server."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, S3_SECRET, copy_store, run_pipeline, store_snapshot

# A publish that dies (SIGKILL) halfway through its third blob upload, as a killed CI job would.
KILLED_PUBLISH = r"""
import os, runpy, signal, sys
from pipeline.store import remote

calls = []
upload = remote.Remote._upload

def dying_upload(self, local, target, size):
    calls.append(target)
    if len(calls) == 3:
        staging = target + ".part-killed" if self.staged else target
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        with open(local, "rb") as src, self.fs.open(staging, "wb") as out:
            out.write(src.read(max(1, size // 2)))
            out.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return upload(self, local, target, size)

remote.Remote._upload = dying_upload
sys.argv[0] = "pipeline.publish"
runpy.run_module("pipeline.publish", run_name="__main__")
"""


def publish(store: Path, *overrides: str, **kw):
    return run_pipeline(store, *overrides, entry="pipeline.publish", **kw)


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def listed(url: str, env: dict | None = None) -> list[list[str]]:
    p = cli("pipeline.publish", "--list", url, env=env)
    assert p.returncode == 0, p.stderr
    return [line.split("  ") for line in p.stdout.splitlines()]


@pytest.fixture(scope="module")
def published(tmp_path_factory, built_store):
    """The built tiny_llama package published once to a folder: (store, destination, name, run)."""
    base = tmp_path_factory.mktemp("published")
    store = copy_store(built_store, base / "store")
    r = publish(store, f"to={base / 'dest'}")
    assert r.rc == 0, r.err
    return store, base / "dest", r.summary["published"][0]["name"], r


def test_publish_then_fetch_from_a_folder(tmp_path, published):
    store, dest, name, r = published
    assert all(s["status"] == "cached" for s in r.summary["stages"])  # the built store: nothing rebuilt
    [line] = listed(str(dest))
    package_key = next(s["key"] for s in r.summary["stages"] if s["name"] == "package")
    assert line[:4] == [name, "tiny_llama", "cpu", package_key] and line[5].endswith("MB")
    assert name == f"tiny_llama-cpu-{package_key[:12]}"
    doc = json.loads((dest / "packages" / f"{name}.json").read_text())
    prov = doc["provenance"]
    assert prov["key"] == package_key and prov["validation"]["passed"] is True
    assert prov["config"]["model"]["name"] == "tiny_llama" and "store" not in prov["config"]
    assert set(prov["versions"]) >= {"onnxruntime", "torch", "transformers"}
    assert prov["compiler"]["kind"] == "onnxruntime"
    assert prov["git_commit"] is None or len(prov["git_commit"].split("+")[0]) == 40

    got = tmp_path / "got"
    p = cli("pipeline.fetch", f"{dest}/{name}", str(got))
    assert p.returncode == 0, p.stderr
    assert "every sha256 checked" in p.stdout
    package = Path(r.summary["package"])
    files = sorted(str(f.relative_to(package)) for f in package.rglob("*") if f.is_file())
    assert sorted(str(f.relative_to(got)) for f in got.rglob("*") if f.is_file()) == files
    assert all((got / f).read_bytes() == (package / f).read_bytes() for f in files)
    run = cli("runtime", str(got), "--prompt", "Hello", "--max-new-tokens", "4")
    assert run.returncode == 0, run.stderr
    # into a taken folder: refused, the folder untouched
    again = cli("pipeline.fetch", f"{dest}/{name}", str(got))
    assert again.returncode == 2 and again.stderr.startswith("error: dir: ") and len(again.stderr.splitlines()) == 1
    missing = cli("pipeline.fetch", f"{dest}/nosuch", str(tmp_path / "x"))
    assert missing.returncode == 2 and f"published there: {name}" in missing.stderr
    assert not (tmp_path / "x").exists()


def test_a_publish_killed_mid_upload_leaves_nothing_visible_and_its_retry_completes(tmp_path, built_store):
    store = copy_store(built_store, tmp_path / "store")
    dest = tmp_path / "dest"
    p = subprocess.run([sys.executable, "-c", KILLED_PUBLISH, "model=tiny_llama", f"store.root={store}",
                        f"hydra.run.dir={tmp_path / 'run'}", f"to={dest}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == -9, p.stderr
    assert len(list((dest / "cas").rglob("*"))) > 2  # two blobs and a half-written third
    assert listed(str(dest)) == [] and not (dest / "packages").exists()

    r = publish(store, f"to={dest}")
    assert r.rc == 0, r.err
    done = r.summary["published"][0]
    assert done["new"] and 0 < done["uploaded_bytes"] < done["bytes"]  # the first two blobs were not sent again
    assert [line[0] for line in listed(str(dest))] == [done["name"]]
    assert cli("pipeline.fetch", f"{dest}/{done['name']}", str(tmp_path / "got")).returncode == 0


def tamper(dest: Path, name: str, edit) -> Path:
    """A copy of the publication folder with ``edit(doc, copy)`` applied to the copy."""
    copy = dest.parent / f"tampered-{len(list(dest.parent.glob('tampered-*')))}"
    shutil.copytree(dest, copy)
    path = copy / "packages" / f"{name}.json"
    doc = json.loads(path.read_text())
    edit(doc, copy)
    path.write_text(json.dumps(doc))
    return copy


def flip_a_byte(doc, copy):
    file_id = doc["files"]["model.onnx"][0]
    blob = copy / "cas" / file_id[:2] / file_id
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0x01
    blob.write_bytes(bytes(data))


def move(to: str):
    def edit(doc, copy):
        doc["files"][to] = doc["files"].pop("model.onnx")
    return edit


def link_out(doc, copy):
    doc["files"]["tokenizer/link"] = {"link": "/etc/passwd"}


@pytest.mark.parametrize("edit, says", [
    (flip_a_byte, "expected: refused"),
    (move("../outside.onnx"), "leaves the folder: refused"),
    (move("/tmp/absolute.onnx"), "leaves the folder: refused"),
    (link_out, "is not a plain file"),
])
def test_fetch_refuses_a_tampered_publication(tmp_path, published, edit, says):
    _, dest, name, _ = published
    source = tamper(dest, name, edit)
    got = tmp_path / "got"
    p = cli("pipeline.fetch", f"{source}/{name}", str(got))
    assert p.returncode == 1 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not got.exists() and not list(tmp_path.glob(".got*")) and not Path("/tmp/absolute.onnx").exists()
    assert not (source.parent / "outside.onnx").exists() and not (tmp_path / "outside.onnx").exists()


def test_a_taken_name_is_not_replaced(tmp_path, published):
    store, dest, name, _ = published
    other = tamper(dest, name, lambda doc, copy: doc.update(key="0" * 64))  # the name, held by another package
    before = (other / "packages" / f"{name}.json").read_bytes()
    r = publish(store, f"to={other}", f"name={name}")
    assert r.rc == 2 and f"name: '{name}' is already published at {other} for another package" in r.err
    assert (other / "packages" / f"{name}.json").read_bytes() == before


@pytest.mark.parametrize("overrides, says", [
    ((), "error: to: None is not allowed"),
    (("to=nosuchproto://x/y",), "error: to: 'nosuchproto://x/y' is not allowed here"),
    (("to=relative/dir",), "error: to: 'relative/dir' is not allowed"),
    (("to=/tmp/x", "name=../up"), "error: name: '../up' is not allowed"),
])
def test_bad_publish_input_is_one_line(tmp_path, built_store, overrides, says):
    store = copy_store(built_store, tmp_path / "store")
    before = store_snapshot(store)
    r = publish(store, *overrides)
    assert r.rc == 2 and r.err.strip().startswith(says) and len(r.err.strip().splitlines()) == 1, r.err
    assert store_snapshot(store) == before and not Path("/tmp/x").exists()


def test_publish_to_s3_is_idempotent_and_keeps_credentials_out(tmp_path, published, s3):
    env, fs = s3
    store, _, name, _ = published
    url = "s3://packages/ci"
    first = publish(store, f"to={url}", env=env)
    assert first.rc == 0, first.err
    assert first.summary["published"][0]["uploaded_bytes"] > first.summary["published"][0]["bytes"]  # + manifest
    second = publish(store, f"to={url}", env=env)
    assert second.rc == 0, second.err
    assert second.summary["published"][0]["uploaded_bytes"] == 0 and "uploaded 0 bytes" in second.out
    assert [line[0] for line in listed(url, env)] == [name]
    got = tmp_path / "got"
    p = cli("pipeline.fetch", f"{url}/{name}", str(got), env=env)
    assert p.returncode == 0, p.stderr
    fs.invalidate_cache()
    objects = fs.find("packages/ci")
    assert f"packages/ci/packages/{name}.json" in objects
    assert not [o for o in objects if ".part" in o]
    for key in objects:
        if key.endswith(".json"):
            assert S3_SECRET not in fs.cat_file(key).decode()
    for root in (got, first.run_dir, second.run_dir):
        for path in Path(root).rglob("*"):
            if path.is_file():
                assert S3_SECRET.encode() not in path.read_bytes(), path
    assert S3_SECRET not in first.out + first.err + second.out + second.err + p.stdout + p.stderr


def test_credentials_given_as_options_are_written_nowhere(tmp_path, published, s3):
    """Key and secret on the command line (to_options), none in the environment: the publish works,
    and neither the run's files (Hydra's saved config included) nor the bucket nor the output hold the secret."""
    env, fs = s3
    store, _, name, _ = published
    options = (f"to_options={{key: {env['AWS_ACCESS_KEY_ID']}, secret: {S3_SECRET}, "
               f"client_kwargs: {{endpoint_url: '{env['AWS_ENDPOINT_URL']}'}}}}")
    r = publish(store, "to=s3://packages/options", options, "name=with-options")
    assert r.rc == 0, r.err
    assert (r.run_dir / ".hydra" / "overrides.yaml").is_file()
    for path in r.run_dir.rglob("*"):
        if path.is_file():
            assert S3_SECRET.encode() not in path.read_bytes(), path
    fs.invalidate_cache()
    assert "packages/options/packages/with-options.json" in fs.find("packages/options")
    assert S3_SECRET not in fs.cat_file("packages/options/packages/with-options.json").decode()
    assert S3_SECRET not in r.out + r.err
