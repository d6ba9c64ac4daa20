"""Published packages: a package's files as content-addressed blobs plus a manifest, at any fsspec URL.

    <URL>/cas/<xx>/<file id>       the blobs (a remote store's layout: one URL can be both)
    <URL>/packages/<name>.json     the publication: name, model, target, key, digest, created, bytes,
                                   files {path: [file id, size]}, provenance

Publishing uploads the blobs the destination lacks, then the manifest, last: a package is
visible only once all of its blobs are there, an interrupted publish leaves nothing visible and
its retry uploads only what is missing, and publishing the same content again uploads nothing.
A name stays bound to the key it was first published with: other content under a taken name
is refused. Fetching checks, before writing anything, that the destination is new or empty
and that the whole manifest is JSON and passes pipeline.store.publication_schema (every
field's type, the name asked for, plain relative paths, sizes summing to ``bytes``, the tree
digest) and fits on the disk; then it streams each blob with its declared size as a hard
limit, checks its sha256, and checks the tree against the package's own manifest.json, all in
a scratch folder beside the destination that becomes it only once everything checked. On a
failure nothing is left; a scratch left by a killed fetch is removed by the next one.
``--list`` skips (and names) every entry that fails the schema.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.store import publication_schema as schema
from pipeline.store.files import content_digest, free_bytes
from pipeline.store.local import Store
from pipeline.store.records import ActionRecord, now_iso
from pipeline.store.remote import Remote

SCRATCH = re.compile(r"\.fetch-(?P<host>.+)-(?P<pid>[0-9]+)-[0-9a-f]{8}")  # after ".<dir name>"


class PublicationError(ValueError):
    """Bad input: a bad name, a name taken by other content, a name not published, a taken folder."""


class Refused(RuntimeError):
    """A publication whose content fails a check (its manifest, a path, a digest, the package) or does not fit."""


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not schema.NAME.fullmatch(name):
        raise PublicationError(f"name: {name!r} is not allowed; allowed: {schema.NAME_ALLOWED}")
    return name


def default_name(model: str, target: str, key: str) -> str:
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', model)}-{target}-{key[:12]}"


def manifest_path(remote: Remote, name: str) -> str:
    return remote.path("packages", f"{name}.json")


@dataclass(frozen=True)
class Published:
    name: str
    url: str
    files: int
    bytes: int
    uploaded_bytes: int   # blobs and manifest written by this publish (0: it was all there)
    new: bool             # the manifest was written by this publish


def publish(remote: Remote, store: Store, record: ActionRecord, name: str, manifest: Mapping[str, Any],
            provenance: Mapping[str, Any]) -> Published:
    """The package of ``record`` (a package stage's action record) under ``name``; ``manifest`` is its manifest.json."""
    check_name(name)
    path = manifest_path(remote, name)
    try:
        existing = remote.read_json(path)
    except ValueError as e:
        raise PublicationError(f"name: {name!r} is taken at {remote} by something that is not a publication "
                               f"({remote.relative(path)}: {e}); allowed: another name") from None
    if existing is not None and (not isinstance(existing, dict) or existing.get("key") != record.key):
        taken = existing.get("key") if isinstance(existing, dict) else None
        raise PublicationError(
            f"name: {name!r} is already published at {remote} for another package (key {str(taken)[:12]}…, "
            f"this one {record.key[:12]}…); allowed: a name not taken, or the default name")
    files = {rel: list(entry) for rel, entry in record.files.items()}
    total = record.bytes
    uploaded = remote.push_blobs(files, store)
    if existing is not None:
        return Published(name, str(remote), len(files), total, uploaded, False)
    doc = {"format": schema.FORMAT, "name": name, "model": manifest["model"].get("name"), "target": manifest["target"],
           "kind": manifest["kind"], "key": record.key, "digest": record.digest, "created": now_iso(),
           "bytes": total, "files": files, "provenance": dict(provenance)}
    schema.check(doc, name)  # what fetch will take
    data = json.dumps(doc, indent=1, sort_keys=True).encode()
    remote.put_atomic(data, path)
    return Published(name, str(remote), len(files), total, uploaded + len(data), True)


def listing(remote: Remote) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Every publication at the remote that passes the schema, oldest first; and the others: (path, why)."""
    docs, skipped = [], []
    for path in sorted(remote.glob(remote.path("packages", "*.json"))):
        try:
            doc = remote.read_json(path)
            if doc is not None:  # None: removed since the glob
                schema.check(doc, path.rsplit("/", 1)[-1].removesuffix(".json"))
                docs.append(doc)
        except (ValueError, OSError) as e:
            skipped.append((remote.relative(path), str(e) or type(e).__name__))
    return sorted(docs, key=lambda d: (d["created"], d["name"])), skipped


def list_line(doc: Mapping[str, Any]) -> str:
    """name, model, target, key, created, size: what ``pipeline.publish --list`` prints per package."""
    return "  ".join([doc["name"], doc["model"], doc["target"], doc["key"], doc["created"], _size(doc["bytes"])])


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n}"


def fetch(remote: Remote, name: str, dest: Path) -> dict[str, Any]:
    """The publication ``name`` into the folder ``dest`` (absent or empty), all checked; its manifest document.
    PublicationError for a bad name, a name not published or a taken ``dest``; Refused (a
    RuntimeError, as a blob's failed check) for content that fails a check. On any failure
    ``dest`` and its parent hold what they held before."""
    check_name(name)
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise PublicationError(f"dir: {str(dest)!r} exists and is not an empty folder; allowed: a new or empty folder")
    doc, files = _manifest(remote, name)
    free = free_bytes(dest)
    if doc["bytes"] > free:
        raise Refused(f"its {doc['bytes']} bytes do not fit in the {free} bytes free for {dest}")
    made = [folder for folder in dest.parents if not folder.exists()]
    scratch = dest.parent / f".{dest.name}.fetch-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_scratches(dest)
        scratch.mkdir()
        _download(remote, files, scratch)
        _check_package(scratch, files)
        scratch.rename(dest)  # replaces an empty folder
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        for folder in made:  # nearest first
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return doc


def _manifest(remote: Remote, name: str) -> tuple[dict[str, Any], dict[str, tuple[str, int]]]:
    """The publication's document and files, checked against the schema; PublicationError when absent."""
    path = manifest_path(remote, name)
    try:
        doc = remote.read_json(path)
    except ValueError as e:
        raise Refused(f"{remote.relative(path)}: {e}: not a publication, refused") from None
    if doc is None:
        known = [d["name"] for d in listing(remote)[0]]
        raise PublicationError(f"name: {name!r} is not published at {remote}; published there: "
                               f"{', '.join(known) if known else 'nothing'}")
    try:
        return doc, schema.check(doc, name)
    except schema.Invalid as e:
        raise Refused(f"{remote.relative(path)}: {e}: refused") from None


def _download(remote: Remote, files: Mapping[str, tuple[str, int]], scratch: Path) -> None:
    inside = scratch.resolve()
    fetched: dict[str, Path] = {}
    for rel, (file_id, size) in sorted(files.items()):
        target = scratch / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(inside):  # the schema's path check, once more on disk
            raise Refused(f"entry {rel!r} leads out of the folder: refused")
        if file_id in fetched:  # the same content at two paths: downloaded once
            shutil.copy2(fetched[file_id], target)
        else:
            remote.get_blob(file_id, size, target)
            fetched[file_id] = target


def _remove_stale_scratches(dest: Path) -> None:
    """Scratch folders of earlier fetches to ``dest`` on this host whose process is gone (killed)."""
    prefix = f".{dest.name}"
    for old in dest.parent.iterdir():
        found = SCRATCH.fullmatch(old.name[len(prefix):]) if old.name.startswith(prefix) else None
        if found and found["host"] == socket.gethostname() and not _alive(int(found["pid"])):
            shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's, or no pid at all: left alone
        pass
    return True


def _check_package(folder: Path, files: Mapping[str, tuple[str, int]]) -> None:
    """The fetched tree is the package its manifest.json describes (every other file, same sha256)."""
    from runtime import package_format as fmt

    try:
        listed = json.loads((folder / fmt.MANIFEST).read_text())["files"]
        described = {rel: e.get("sha256") for rel, e in listed.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise Refused(f"it holds no readable {fmt.MANIFEST}: not a package, refused") from None
    have = {rel: content_digest(fid) for rel, (fid, _) in files.items() if rel != fmt.MANIFEST}
    if described != have:
        raise Refused(f"its files differ from what its {fmt.MANIFEST} lists: refused")
