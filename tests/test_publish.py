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


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, **kw)


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
    """A copy of the publication folder (blobs hard-linked) with ``edit(doc, copy)`` applied to the copy's
    manifest: the edited document is written unless ``edit`` wrote the file itself."""
    copy = dest.parent / f"tampered-{len(list(dest.parent.glob('tampered-*')))}"
    shutil.copytree(dest, copy, copy_function=os.link)
    path = copy / "packages" / f"{name}.json"
    doc = json.loads(path.read_text())
    path.unlink()
    edit(doc, copy)
    if not path.exists() and not path.is_symlink():
        path.write_text(json.dumps(doc))
    return copy


def manifest(make):
    """An edit writing the manifest as ``make(its path, the document)`` does."""
    return lambda doc, copy: make(copy / "packages" / f"{doc['name']}.json", doc)


def blob(make, rel: str = "manifest.json"):
    """An edit replacing the blob of ``rel`` (the first fetched) by ``make(its path, its bytes)``."""
    def edit(doc, copy):
        file_id = doc["files"][rel][0]
        path = copy / "cas" / file_id[:2] / file_id
        data = path.read_bytes()
        path.unlink()  # a hard link to the original publication's blob
        make(path, data)
    return edit


def flipped(path: Path, data: bytes) -> None:
    path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])


def linked_out(path: Path, data: bytes) -> None:
    outside = path.parents[3] / "outside.bin"
    outside.write_bytes(b"s" * len(data))
    path.symlink_to(outside)


def move(to: str):
    def edit(doc, copy):
        doc["files"][to] = doc["files"].pop("model.onnx")
    return edit


def entry_size(size):
    def edit(doc, copy):
        doc["files"]["model.onnx"][1] = size
    return edit


HOSTILE = [  # an edit of a publication, what fetch's one error line says
    pytest.param(move("/tmp/absolute.onnx"), "files: '/tmp/absolute.onnx' is not allowed", id="path-absolute"),
    pytest.param(move("../outside.onnx"), "files: '../outside.onnx' is not allowed", id="path-dotdot"),
    pytest.param(move("tokenizer\\..\\..\\outside.onnx"), "files: 'tokenizer\\\\..", id="path-backslash"),
    pytest.param(move("model\0.onnx"), "files: 'model\\x00.onnx' is not allowed", id="path-nul"),
    pytest.param(move("./model.onnx"), "files: './model.onnx' is not allowed", id="path-dot"),
    pytest.param(move("tokenizer"), "files: 'tokenizer' is not allowed; allowed: a path that is not also",
                 id="path-file-and-folder"),
    pytest.param(lambda doc, copy: doc["files"].update({"tokenizer/link": {"link": "/etc/passwd"}}),
                 "files: 'tokenizer/link': {'link': '/etc/passwd'} is not allowed; allowed: [file id", id="link-entry"),
    pytest.param(lambda doc, copy: doc.update(bytes=str(doc["bytes"])), "bytes: '29", id="bytes-a-string"),
    pytest.param(lambda doc, copy: doc.update(bytes=doc["bytes"] + 1), "allowed: 29", id="bytes-not-the-sum"),
    pytest.param(lambda doc, copy: doc.update(key=5), "key: 5 is not allowed; allowed: a sha256", id="key-an-int"),
    pytest.param(lambda doc, copy: doc.pop("name"), "name: missing; allowed: 1 to 128", id="name-missing"),
    pytest.param(lambda doc, copy: doc.update(name="other"), "name: 'other' is not allowed; allowed: 'tiny_llama",
                 id="name-differs"),
    pytest.param(lambda doc, copy: doc.update(model="tiny\nllama"), "model: 'tiny\\nllama' is not allowed",
                 id="model-two-lines"),
    pytest.param(lambda doc, copy: doc.update(files=list(doc["files"])), "files: ['manifest.json'", id="files-a-list"),
    pytest.param(entry_size(-1), "files: 'model.onnx': [", id="size-negative"),
    pytest.param(entry_size(True), ", True] is not allowed", id="size-bool"),
    pytest.param(entry_size(16097.0), ", 16097.0] is not allowed", id="size-float"),
    pytest.param(lambda doc, copy: doc["files"].update(copy=[doc["files"]["model.onnx"][0], 5]),
                 "files: 'copy': [", id="one-content-two-sizes"),
    pytest.param(lambda doc, copy: doc.update(format=2), "format: 2 is not allowed; allowed: 1", id="format-2"),
    pytest.param(lambda doc, copy: doc.update(format=True), "format: True is not allowed", id="format-a-bool"),
    pytest.param(lambda doc, copy: doc.update(links={"a": "/etc"}), "field 'links': {'a': '/etc'} is not allowed",
                 id="extra-field"),
    pytest.param(lambda doc, copy: doc.update(digest="0" * 64), "digest: '000", id="digest-wrong"),
    pytest.param(manifest(lambda path, doc: path.write_text("{not json")), ".json: not JSON (Expecting", id="not-json"),
    pytest.param(manifest(lambda path, doc: path.write_text(json.dumps([doc]))), "publication: [{", id="a-json-list"),
    pytest.param(manifest(lambda path, doc: path.symlink_to("/dev/zero")), "not JSON of at most 16777216 bytes",
                 id="manifest-endless"),
    pytest.param(blob(lambda path, data: path.write_bytes(data + bytes(8 << 20))),
                 "is longer than the 6076 bytes expected: refused", id="blob-longer-by-8MiB"),
    pytest.param(blob(lambda path, data: path.symlink_to("/dev/zero")),
                 "is longer than the 6076 bytes expected: refused", id="blob-endless"),
    pytest.param(blob(lambda path, data: path.write_bytes(data[:3000])), "and 3000 bytes, not the 6076",
                 id="blob-shorter"),
    pytest.param(blob(flipped), "and 6076 bytes, not the 6076 bytes of sha256", id="blob-flipped"),
    pytest.param(blob(linked_out), "and 6076 bytes, not the 6076 bytes of sha256", id="blob-links-out"),
    pytest.param(blob(lambda path, data: None), "No such file or directory", id="blob-missing"),
]


def one_error_line(p: subprocess.CompletedProcess, says: str, code: int = 1) -> None:
    lines = p.stderr.splitlines()
    assert p.returncode == code and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], p.stderr


def at_most_2mib_per_file() -> None:
    """A fetch's file size limit: a blob copied whole before its size is checked fails with EFBIG."""
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))


@pytest.mark.parametrize("edit, says", HOSTILE)
def test_fetch_refuses_a_hostile_publication(tmp_path, published, edit, says):
    _, dest, name, _ = published
    source = tamper(dest, name, edit)
    parent = tmp_path / "parent"
    (parent / "got").mkdir(parents=True)
    (parent / "kept").write_text("there before")
    before = sorted(parent.rglob("*"))
    p = cli("pipeline.fetch", f"{source}/{name}", str(parent / "got"), preexec_fn=at_most_2mib_per_file)
    one_error_line(p, says)
    assert f"(nothing written to {parent / 'got'})" in p.stderr
    assert sorted(parent.rglob("*")) == before and not any((parent / "got").iterdir())
    assert not Path("/tmp/absolute.onnx").exists() and not (source.parent / "outside.onnx").exists()


def test_a_taken_folder_is_refused_before_any_download(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    p = cli("pipeline.fetch", f"{tmp_path / 'no-remote-here'}/name", str(taken))
    one_error_line(p, "error: dir: ", code=2)  # not "not published": the remote is not read
    assert sorted(tmp_path.rglob("*")) == [taken, taken / "file"]


def test_list_skips_and_names_each_entry_that_is_not_a_publication(published):
    _, dest, name, _ = published
    source = tamper(dest, name, lambda doc, copy: None)
    good = json.loads((source / "packages" / f"{name}.json").read_text())
    bad = {"bytes-a-string": json.dumps({**good, "name": "bytes-a-string", "bytes": "1"}), "not-json": "{",
           "a-list": "[]", "not-its-name": json.dumps(good)}
    for stem, text in bad.items():
        (source / "packages" / f"{stem}.json").write_text(text)
    p = cli("pipeline.publish", "--list", str(source))
    assert p.returncode == 0 and [line.split("  ")[0] for line in p.stdout.splitlines()] == [name], p.stderr
    assert sorted(p.stderr.splitlines()) == [
        "warning: packages/a-list.json: skipped: publication: [] is not allowed; allowed: a JSON object with the "
        "fields format, name, model, target, kind, key, digest, created, bytes, files, provenance",
        "warning: packages/bytes-a-string.json: skipped: bytes: '1' is not allowed; allowed: a non-negative integer",
        f"warning: packages/not-its-name.json: skipped: name: '{name}' is not allowed; allowed: 'not-its-name', "
        "the name it is published under",
        "warning: packages/not-json.json: skipped: not JSON (Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1))"]


# A fetch sent a signal (DIE_BY, SIGKILL as a killed job) after the first MiB of its biggest blob reached the scratch.
KILLED_FETCH = r"""
import os, runpy, signal, sys
from fsspec.implementations.local import LocalFileSystem

signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job starts with SIGINT ignored
opened = LocalFileSystem.open

def dying_open(self, path, mode="rb", **kw):
    f = opened(self, path, mode, **kw)
    if "/cas/" in str(path) and f.size > 8 << 20:
        read = f.read
        def read_or_die(n=-1):
            if f.tell() > 0:
                os.kill(os.getpid(), signal.Signals[os.environ.get("DIE_BY", "SIGKILL")])
            return read(n)
        f.read = read_or_die
    return f

LocalFileSystem.open = dying_open
sys.argv[0] = "pipeline.fetch"
runpy.run_module("pipeline.fetch", run_name="__main__")
"""


def test_a_fetch_killed_mid_download_leaves_no_folder_and_its_retry_completes(tmp_path, published):
    _, dest, name, _ = published
    got = tmp_path / "parent" / "got"
    p = subprocess.run([sys.executable, "-c", KILLED_FETCH, f"{dest}/{name}", str(got)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, p.stderr
    [scratch] = list(got.parent.iterdir())
    assert scratch.name.startswith(".got.fetch-") and not got.exists()
    assert 0 < (scratch / "model.onnx.data").stat().st_size < 25_000_000  # killed mid-blob
    again = cli("pipeline.fetch", f"{dest}/{name}", str(got))
    assert again.returncode == 0, again.stderr
    assert list(got.parent.iterdir()) == [got]  # the killed fetch's scratch is gone


def test_an_interrupted_fetch_is_one_line_and_leaves_nothing(tmp_path, published):
    _, dest, name, _ = published
    got = tmp_path / "new" / "parent" / "got"
    p = subprocess.run([sys.executable, "-c", KILLED_FETCH, f"{dest}/{name}", str(got)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "DIE_BY": "SIGINT"})
    one_error_line(p, "interrupted (nothing written to", code=130)
    assert list(tmp_path.iterdir()) == []  # not even the folders it made for <dir>


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
