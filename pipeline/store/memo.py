"""The digest memo: local stat state that turns (device, inode, size, mtime) into a content digest.

It plays the part of DVC's state database: a large checkpoint is hashed once, and re-hashed
only when it changes; keying by inode rather than path means a file hard-linked from a stored
blob (the weights a package shares with its compile stage) is never re-hashed. It is machine
state, never part of a record: a store copied or synced elsewhere (new inodes, new mtimes)
re-hashes each file once, then hits.

Where it lives: ``store.memo`` if set; else ``<store root>/local/memo.sqlite`` when the store is
on a local filesystem, and under ``$XDG_CACHE_HOME/ai100-pipeline/`` (one file per store root)
when the store is on a network filesystem, where SQLite's locking is not safe.
"""
from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import time
from pathlib import Path

from pipeline.store.digests import hash_file, tree_digest, tree_files

# Filesystem types whose locking SQLite cannot rely on (and whose inodes mean nothing to another host).
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs", "beegfs",
              "afs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "fuse.juicefs", "fuse.glusterfs")


def filesystem_type(path: Path, mountinfo: str | None = None) -> str | None:
    """The type of the filesystem holding ``path`` (its nearest existing ancestor), from /proc/self/mountinfo."""
    return mount_of(path, mountinfo)[0]


def mount_of(path: Path, mountinfo: str | None = None) -> tuple[str | None, frozenset[str]]:
    """(filesystem type, mount and superblock options) of the mount holding ``path``."""
    path, rest = Path(path).absolute(), []
    while not path.exists() and path != path.parent:  # where it will be: its nearest existing ancestor, resolved
        path, rest = path.parent, [path.name, *rest]
    real = os.path.join(os.path.realpath(path), *rest)
    best, found = "", (None, frozenset())
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return found
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 6 or not tail:
            continue
        mount = fields[4].replace("\\040", " ")
        if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            options = set(fields[5].split(",")) | (set(tail[2].split(",")) if len(tail) > 2 else set())
            best, found = mount, (tail[0], frozenset(options))
    return found


def lock_problem(root: Path, mountinfo: str | None = None) -> str | None:
    """Why builders on several machines could not exclude each other on this store, or None.

    The store's locks are flock() locks (filelock); Linux's NFS client turns them into NFS
    byte-range locks, which every client sees, unless the mount keeps locks local to the host
    (``nolock``, ``local_lock=flock`` or ``local_lock=all``)."""
    fstype, options = mount_of(root, mountinfo)
    if not fstype or not fstype.startswith("nfs"):
        return None
    local = sorted(options & {"nolock", "local_lock=flock", "local_lock=all"})
    if local:
        return (f"store.root: {str(root)!r} is on NFS mounted with {local[0]}: its locks would hold on this machine "
                "only; allowed: a store on a mount with NFS locking (NFSv4, or NFSv3 with lockd; not nolock or "
                "local_lock=flock|all), or a local folder")
    return None


def default_memo_path(root: Path, fstype: str | None = None) -> Path:
    fstype = fstype or filesystem_type(root) or ""
    if fstype in NETWORK_FS or fstype.startswith("nfs"):
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        from pipeline.discovery import project_distribution

        name = hashlib.sha256(str(Path(root).absolute()).encode()).hexdigest()[:16]
        return cache / project_distribution() / f"memo-{name}.sqlite"
    return Path(root) / "local" / "memo.sqlite"


class DigestMemo:
    """File digests remembered by (device, inode, size, mtime_ns, ctime_ns) in SQLite; safe across processes.

    The ctime is what catches a file rewritten with its mtime put back (``touch -d``, an editor
    that keeps times, a careless edit of a read-only tree): no user call sets it, and writing or
    restoring an mtime moves it. It moves on a new hard link too (a tree placed), which costs
    one more hash of that file, once.

    A cache, never a reason to fail: a database another process holds locked past the retries
    (SQLite's busy timeout does not cover switching to WAL or creating the table) or one that
    cannot be opened is skipped, and the file hashed. With ``db_path=None`` nothing is remembered
    (used before the store may be written to).
    """

    RETRIES = 8

    def __init__(self, db_path: Path | None):
        self.db_path = db_path
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection | None:
        if self.db_path is None:
            return None
        if self._db is None:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
            try:
                self._retry(lambda: self._setup(db))
            except sqlite3.Error:
                db.close()
                self.db_path = None  # this process hashes without the memo
                return None
            self._db = db
        return self._db

    @staticmethod
    def _setup(db: sqlite3.Connection) -> None:
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # persistent: set once per database
            db.execute("PRAGMA journal_mode=WAL")  # a local disk, by construction
        db.execute("CREATE TABLE IF NOT EXISTS digests (dev INTEGER, inode INTEGER, size INTEGER,"
                   " mtime INTEGER, ctime INTEGER, digest TEXT, PRIMARY KEY (dev, inode))")

    def _retry(self, call):
        for attempt in range(self.RETRIES):
            try:
                return call()
            except sqlite3.OperationalError:
                if attempt == self.RETRIES - 1:
                    raise
                time.sleep(0.02 * 2 ** attempt + random.random() * 0.02)
        return None

    def file(self, path: Path) -> str:
        """The content digest of a file: remembered when its stat is unchanged, else hashed (and remembered)."""
        st = os.stat(path)
        ident = (st.st_dev, st.st_ino)
        db = self._conn()
        if db is not None:
            try:
                row = self._retry(lambda: db.execute("SELECT size, mtime, ctime, digest FROM digests WHERE dev=? AND inode=?",
                                                     ident).fetchone())
            except sqlite3.OperationalError:
                row = None
            if row and tuple(row[:3]) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
                return row[3]
        digest = hash_file(path)
        self._remember(st, digest)  # the stat from before hashing: a change meanwhile is seen next time
        return digest

    def note(self, path: Path, digest: str) -> None:
        """Remember a digest this process has just established for ``path`` (hashed, then moved,
        chmod-ed or linked, which move its ctime but not its content)."""
        if self._conn() is not None:
            self._remember(os.stat(path), digest)

    def _remember(self, st: os.stat_result, digest: str) -> None:
        db = self._conn()
        if db is None:
            return
        try:
            self._retry(lambda: db.execute("INSERT OR REPLACE INTO digests VALUES (?,?,?,?,?,?)",
                                           (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest)))
        except sqlite3.OperationalError:
            pass  # not remembered: hashed again next time

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
