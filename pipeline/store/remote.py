"""The store's second tier: a remote (any fsspec URL: a folder, ``s3://bucket/prefix``, ...) holding records and blobs.

    <remote>/ac/<key>.json        an action record (the same portable JSON as the local store's)
    <remote>/cas/<xx>/<file id>   blobs, named by content digest

As Bazel's remote cache: a local miss asks the remote first; a hit pulls the record and only
the blobs the local store lacks, checks each blob's digest, and builds the tree locally. A
build pushes its blobs, then its record (a reader never sees a record whose blobs are not all
there), when ``push`` is on (CI); otherwise the remote is read only (laptops). Credentials come
from fsspec's and botocore's usual places (environment, config files, ``store.remote_options``)
and are never written anywhere: the URL is shown without any user or password in it.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

from pipeline.store.digests import tree_digest
from pipeline.store.files import EXEC_SUFFIX, content_digest, remove_tree
from pipeline.store.local import Store
from pipeline.store.records import ActionRecord

BIG_BLOB = 64 << 20   # blobs from this size on show a progress bar
RETRIES = 4           # transient errors: tries per transfer, with backoff
CHUNK = 1 << 20       # a blob is read this much at a time
MAX_JSON = 16 << 20   # a manifest read is refused past this size


def check_url(key: str, url: Any) -> str:
    """``url`` if it names a filesystem fsspec has here; else ValueError ``key: value ... allowed: ...``."""
    if not isinstance(url, str) or ("://" not in url and not url.startswith("/")):
        raise ValueError(f"{key}: {url!r} is not allowed; allowed: an fsspec URL (s3://bucket/prefix, "
                         "file:///path, an absolute folder)")
    from fsspec.registry import get_filesystem_class

    try:
        get_filesystem_class(url.split("://", 1)[0] if "://" in url else "file")
    except (ImportError, ValueError) as e:
        raise ValueError(f"{key}: {shown(url)!r} is not allowed here ({e}); allowed: a URL whose fsspec "
                         "filesystem is installed (s3fs for s3://)") from None
    return url


def shown(url: str) -> str:
    """The URL without credentials (user:password@)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class Remote:
    def __init__(self, url: str, options: Mapping[str, Any] | None = None, push: bool = False):
        import fsspec

        self.url = url.rstrip("/")
        self.push_enabled = push
        self.fs, self.base = fsspec.core.url_to_fs(self.url, **dict(options or {}))
        self.base = self.base.rstrip("/")
        # an object store's PUT is atomic (a reader sees all of an object or none of it); a folder
        # needs a staging name and a rename, as the local store does
        self.staged = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.pushed_bytes = 0
        self.pulled_bytes = 0

    def __str__(self) -> str:
        return shown(self.url)

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def record_path(self, key: str) -> str:
        return self.path("ac", f"{key}.json")

    def blob_path(self, file_id: str) -> str:
        return self.path("cas", file_id[:2], file_id)

    # ---- reading
    def glob(self, pattern: str) -> list[str]:
        return list(_retry(lambda: self.fs.glob(pattern)))

    def record(self, key: str) -> ActionRecord | None:
        """The remote's record of ``key``; None when absent; RecordUnusable when it does not validate."""
        data = self._cat(self.record_path(key))
        return None if data is None else ActionRecord.parse(data, key)

    def read_json(self, path: str, limit: int = MAX_JSON) -> Any:
        """A JSON document of the remote; None when absent; ValueError ``not JSON (why)`` when it is not
        JSON or more than ``limit`` bytes (a hostile remote's endless file is not read whole)."""
        data = self._cat(path, end=limit + 1)
        if data is not None and len(data) > limit:
            raise ValueError(f"not JSON of at most {limit} bytes")
        try:
            return None if data is None else json.loads(data)
        except ValueError as e:
            raise ValueError(f"not JSON ({e})") from None

    def relative(self, path: str) -> str:
        """``path`` as shown to a user: inside the remote."""
        return path.removeprefix(self.base + "/")

    def _cat(self, path: str, end: int | None = None) -> bytes | None:
        try:
            return _retry(lambda: self.fs.cat_file(path, end=end))
        except FileNotFoundError:
            return None

    def pull(self, rec: ActionRecord, store: Store) -> None:
        """Every blob of the record the local store lacks (digest-checked), the tree, then the record."""
        if rec.materialized:
            digests = {rel: file_id for rel, (file_id, _size) in rec.files.items()}
            if tree_digest(digests) != rec.digest:
                raise RuntimeError(f"store.remote: the record of {rec.key[:16]}… in {self} does not match its "
                                   "files: refused")
            for file_id, size in rec.files.values():
                if not store.has_blob(file_id):
                    self._download(file_id, size, store)
            store.place_tree(rec.digest, digests, rec.owned)
        store.records.write(rec)

    def _download(self, file_id: str, size: int, store: Store) -> None:
        folder = store.new_tmp(f"pull-{file_id[:12]}")
        try:
            self.get_blob(file_id, size, folder / "blob")
            store.add_blob(folder / "blob", file_id)
        finally:
            remove_tree(folder)
        self.pulled_bytes += size

    def get_blob(self, file_id: str, size: int, dest: Path) -> None:
        """One blob to ``dest``, its sha256 and size checked (RuntimeError on a mismatch), executable if marked.
        ``size`` is a hard limit: reading stops as soon as the blob proves longer, before writing it."""
        try:
            got, digest = _retry(lambda: self._copy(self.blob_path(file_id), size, dest,
                                                    _progress(size, f"pull {file_id[:12]}")))
            expected = content_digest(file_id)
            if digest != expected or got != size:
                raise RuntimeError(f"blob {file_id[:16]}… from {self} has sha256 {digest[:16]}… and {got} bytes, "
                                   f"not the {size} bytes of sha256 {expected[:16]}… expected: refused")
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        if file_id.endswith(EXEC_SUFFIX):
            dest.chmod(0o755)

    def _copy(self, path: str, size: int, dest: Path, progress: Any) -> tuple[int, str]:
        """At most ``size`` bytes of ``path`` to ``dest``, hashed on the way: (bytes, sha256); RuntimeError past it."""
        digest, got = hashlib.sha256(), 0
        progress.set_size(size)
        try:
            with self.fs.open(path, "rb", block_size=CHUNK) as src, open(dest, "wb") as out:
                # one byte past the size is asked for: it is how a longer blob shows
                while chunk := src.read(min(CHUNK, size + 1 - got)):
                    got += len(chunk)
                    if got > size:
                        raise RuntimeError(f"blob {Path(path).name[:16]}… from {self} is longer than the {size} "
                                           "bytes expected: refused")
                    digest.update(chunk)
                    out.write(chunk)
                    progress.relative_update(len(chunk))
        finally:
            progress.close()
        return got, digest.hexdigest()

    # ---- writing
    def push(self, rec: ActionRecord, store: Store) -> None:
        """Blobs the remote lacks, then the record (last: its presence means the blobs are there)."""
        if rec.materialized:
            self.push_blobs(rec.files, store)
        self.put_atomic(rec.text().encode(), self.record_path(rec.key))

    def push_blobs(self, files: Mapping[str, Any], store: Store) -> int:
        """The blobs of ``files`` ({path: (file id, size)}) the remote lacks; the bytes uploaded."""
        before = self.pushed_bytes
        for file_id, size in {e[0]: e[1] for e in files.values()}.items():
            target = self.blob_path(file_id)
            if _retry(lambda: self.fs.exists(target)):
                continue
            self._upload(str(store.blob_path(file_id)), target, size)
        return self.pushed_bytes - before

    def _upload(self, local: str, target: str, size: int) -> None:
        staging = f"{target}.part-{secrets.token_hex(4)}" if self.staged else target
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        _retry(lambda: self.fs.put_file(local, staging, callback=_progress(size, f"push {Path(target).name[:12]}")))
        if staging != target:
            _retry(lambda: self.fs.mv(staging, target))
        self.pushed_bytes += size

    def put_atomic(self, data: bytes, target: str) -> None:
        staging = f"{target}.part-{secrets.token_hex(4)}" if self.staged else target
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        _retry(lambda: self.fs.pipe_file(staging, data))
        if staging != target:
            _retry(lambda: self.fs.mv(staging, target))


def _progress(size: int, label: str) -> Any:
    from fsspec.callbacks import NoOpCallback, TqdmCallback

    if size < BIG_BLOB:
        return NoOpCallback()
    return TqdmCallback(tqdm_kwargs={"desc": label, "unit": "B", "unit_scale": True, "leave": False})


def _retry(call: Callable[[], Any]) -> Any:
    """A transfer, retried on transient errors (connection, timeout, 5xx as OSError); not on a missing file."""
    for attempt in range(RETRIES):
        try:
            return call()
        except FileNotFoundError:
            raise
        except (OSError, ConnectionError, TimeoutError):
            if attempt == RETRIES - 1:
                raise
            time.sleep(0.5 * 2 ** attempt)
    return None
