"""Published packages: a package's files as content-addressed blobs plus a manifest, at any fsspec URL.

    <URL>/cas/<xx>/<file id>       the blobs (a remote store's layout: one URL can be both)
    <URL>/packages/<name>.json     the publication: name, model, target, key, digest, created, bytes,
                                   files {path: [file id, size]}, provenance

Publishing uploads the blobs the destination lacks, then the manifest, last: a package is
visible only once all of its blobs are there, an interrupted publish leaves nothing visible and
its retry uploads only what is missing, and publishing the same content again uploads nothing.
A name stays bound to the key it was first published with: other content under a taken name
is refused. Fetching checks every path (no absolute paths, no ``..``, nothing but plain files),
every blob's sha256 and size and the tree's digest, in a scratch folder that becomes the
destination only once all of it checked.
"""
from __future__ import annotations

import json
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from pipeline.store.digests import tree_digest
from pipeline.store.files import content_digest
from pipeline.store.local import Store
from pipeline.store.records import ActionRecord, now_iso
from pipeline.store.remote import Remote

FORMAT = 1
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
FILE_ID = re.compile(r"[0-9a-f]{64}(\.x)?")
FIELDS = ("format", "name", "model", "target", "kind", "key", "digest", "created", "bytes", "files", "provenance")


class PublicationError(ValueError):
    """Bad input: a bad name, a name taken by other content, a name not published, a taken folder."""


class Refused(RuntimeError):
    """A publication whose content fails a check (a path out of the folder, a digest, a package mismatch)."""


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise PublicationError(f"name: {name!r} is not allowed; allowed: 1 to 128 of A-Z a-z 0-9 . _ -, "
                               "beginning with a letter or digit")
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
    existing = remote.read_json(path)
    if existing is not None and existing.get("key") != record.key:
        raise PublicationError(
            f"name: {name!r} is already published at {remote} for another package (key {str(existing.get('key'))[:12]}…, "
            f"this one {record.key[:12]}…); allowed: a name not taken, or the default name")
    files = {rel: list(entry) for rel, entry in record.files.items()}
    total = record.bytes
    uploaded = remote.push_blobs(files, store)
    if existing is not None:
        return Published(name, str(remote), len(files), total, uploaded, False)
    doc = {"format": FORMAT, "name": name, "model": manifest["model"].get("name"), "target": manifest["target"],
           "kind": manifest["kind"], "key": record.key, "digest": record.digest, "created": now_iso(),
           "bytes": total, "files": files, "provenance": dict(provenance)}
    data = json.dumps(doc, indent=1, sort_keys=True).encode()
    remote.put_atomic(data, path)
    return Published(name, str(remote), len(files), total, uploaded + len(data), True)


def listing(remote: Remote) -> list[dict[str, Any]]:
    """Every publication at the remote (readable ones), oldest first."""
    docs = []
    for path in sorted(remote.glob(remote.path("packages", "*.json"))):
        doc = remote.read_json(path)
        if isinstance(doc, dict) and doc.get("format") == FORMAT:
            docs.append(doc)
    return sorted(docs, key=lambda d: (str(d.get("created")), str(d.get("name"))))


def list_line(doc: Mapping[str, Any]) -> str:
    """name, model, target, key, created, size: what ``pipeline.publish --list`` prints per package."""
    return "  ".join([str(doc.get("name")), str(doc.get("model")), str(doc.get("target")), str(doc.get("key")),
                      str(doc.get("created")), _size(int(doc.get("bytes") or 0))])


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n}"


def fetch(remote: Remote, name: str, dest: Path) -> dict[str, Any]:
    """The publication ``name`` into the folder ``dest`` (absent or empty), all checked; its manifest document.
    PublicationError for a bad name, a name not published or a taken ``dest``; Refused (a
    RuntimeError, as a blob's failed check) for content that fails a check. Nothing is left at
    ``dest`` on failure."""
    check_name(name)
    doc = remote.read_json(manifest_path(remote, name))
    if doc is None:
        known = [d["name"] for d in listing(remote)]
        raise PublicationError(f"name: {name!r} is not published at {remote}; published there: "
                               f"{', '.join(known) if known else 'nothing'}")
    files = checked_files(doc, name)
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise PublicationError(f"dir: {str(dest)!r} exists and is not an empty folder; allowed: a new or empty folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = dest.parent / f".{dest.name}.fetch-{secrets.token_hex(4)}"
    scratch.mkdir()
    try:
        inside = scratch.resolve()
        fetched: dict[str, Path] = {}
        for rel, (file_id, size) in sorted(files.items()):
            target = scratch / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.parent.resolve().is_relative_to(inside):
                raise Refused(f"{name}: entry {rel!r} leads out of the folder: refused")
            if file_id in fetched:  # the same content at two paths: downloaded once
                shutil.copy2(fetched[file_id], target)
            else:
                remote.get_blob(file_id, size, target)
                fetched[file_id] = target
        _check_package(scratch, files, name)
        if dest.exists():
            dest.rmdir()
        scratch.rename(dest)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return doc


def checked_files(doc: Any, name: str) -> dict[str, tuple[str, int]]:
    """The publication's files, each path and entry checked; PublicationError naming the first bad one."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("files"), dict):
        raise Refused(f"{name}: not a publication of format {FORMAT}: refused")
    extra = set(doc) - set(FIELDS)
    if extra:  # links or anything else a publication of this format never holds
        raise Refused(f"{name}: unknown entries {sorted(extra)} (a publication holds plain files only): refused")
    files: dict[str, tuple[str, int]] = {}
    for rel, entry in doc["files"].items():
        parts = PurePosixPath(rel).parts
        if (not rel or rel.startswith("/") or "\\" in rel or "\0" in rel or ".." in parts or "." in parts
                or rel != str(PurePosixPath(*parts))):
            raise Refused(f"{name}: entry {rel!r} is an absolute path or leaves the folder: refused")
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and FILE_ID.fullmatch(entry[0])
                and isinstance(entry[1], int) and entry[1] >= 0):
            raise Refused(f"{name}: entry {rel!r} is not a plain file [content digest, size]: refused")
        files[rel] = (entry[0], entry[1])
    if tree_digest({rel: e[0] for rel, e in files.items()}) != doc.get("digest"):
        raise Refused(f"{name}: its files do not match its digest: refused")
    return files


def _check_package(folder: Path, files: Mapping[str, tuple[str, int]], name: str) -> None:
    """The fetched tree is the package its manifest.json describes (every other file, same sha256)."""
    from runtime import package_format as fmt

    try:
        listed = json.loads((folder / fmt.MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise Refused(f"{name}: holds no readable {fmt.MANIFEST}: not a package, refused") from None
    have = {rel: content_digest(fid) for rel, (fid, _) in files.items() if rel != fmt.MANIFEST}
    if {rel: e.get("sha256") for rel, e in listed.items()} != have:
        raise Refused(f"{name}: its files differ from what its {fmt.MANIFEST} lists: refused")
