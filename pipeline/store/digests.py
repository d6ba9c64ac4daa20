"""Content digests of files and trees, with a memo keyed by (device, inode, size, mtime).

The memo plays the part of DVC's state database: a large checkpoint is hashed once, and
re-hashed only when it changes. Keying by inode rather than path means a file hard-linked
from a stored blob (the weights a package shares with its compile stage) is never re-hashed.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

CHUNK = 1 << 22


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def hash_json(obj: object) -> str:
    return hash_bytes(canonical_json(obj).encode())


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_files(root: Path) -> list[str]:
    """Relative paths of the regular files under root, sorted (symlinks are refused)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                raise ValueError(f"{p}: symlinks are not allowed in stage outputs")
            out.append(p.relative_to(root).as_posix())
    return sorted(out)


def tree_digest(entries: dict[str, str]) -> str:
    """Digest of a tree from {relative path: file digest}."""
    return hash_bytes("".join(f"{rel}\0{d}\n" for rel, d in sorted(entries.items())).encode())


class DigestMemo:
    """File digests remembered by (device, inode, size, mtime_ns) in SQLite; safe across processes.

    With ``db_path=None`` nothing is remembered (used before the store may be written to).
    """

    def __init__(self, db_path: Path | None):
        self.db_path = db_path
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection | None:
        if self.db_path is None:
            return None
        if self._db is None:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS memo (dev INTEGER, inode INTEGER, size INTEGER,"
                " mtime INTEGER, digest TEXT, PRIMARY KEY (dev, inode))"
            )
        return self._db

    def file(self, path: Path) -> str:
        st = os.stat(path)
        ident = (st.st_dev, st.st_ino)
        db = self._conn()
        if db is not None:
            row = db.execute("SELECT size, mtime, digest FROM memo WHERE dev=? AND inode=?", ident).fetchone()
            if row and (row[0], row[1]) == (st.st_size, st.st_mtime_ns):
                return row[2]
        digest = hash_file(path)
        if db is not None:
            db.execute("INSERT OR REPLACE INTO memo VALUES (?,?,?,?,?)", (*ident, st.st_size, st.st_mtime_ns, digest))
        return digest

    def path(self, path: Path) -> str:
        """Digest of a file, or of a folder's tree (by content only, not location)."""
        path = Path(path)
        if path.is_dir():
            return tree_digest({rel: self.file(path / rel) for rel in tree_files(path)})
        return self.file(path)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
