"""The content-addressed store on a filesystem: immutable blobs, hard-linked trees, locks, atomic ingest.

    <root>/ac/, <root>/index/   action records and the explain index (records.py)
    <root>/cas/<xx>/<digest>    immutable blobs (read-only files)
    <root>/trees/<digest>/      materialized outputs, files hard-linked from cas/
    <root>/tmp/                 builds in progress (a crash leaves garbage here only)
    <root>/locks/<key>.lock     one builder per key
    <root>/local/               this machine's state (the digest memo); never needed elsewhere

Nothing is created under the root until something is written, so a run that stops on bad
input leaves the store as it was.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Callable, Iterator

from pipeline.store.digests import hash_file, tree_digest, tree_files
from pipeline.store.memo import DigestMemo, default_memo_path
from pipeline.store.records import ActionRecord, Records

READ_ONLY_FILE = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
READ_EXECUTE = READ_ONLY_FILE | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH  # folders, and executable files
# A file's id in cas/ is its content digest, plus this suffix when it is executable (a
# script like compile.sh): the mode is part of what is stored, so it survives the store.
EXEC_SUFFIX = ".x"


def content_digest(file_id: str) -> str:
    return file_id.removesuffix(EXEC_SUFFIX)


class Store:
    def __init__(self, root: str | Path, memo_path: str | Path | None = None):
        self.root = Path(root).absolute()
        self.records = Records(self.root)
        self.memo = DigestMemo(Path(memo_path) if memo_path else default_memo_path(self.root))

    # ---- paths
    def blob_path(self, digest: str) -> Path:
        return self.root / "cas" / digest[:2] / digest

    def tree_path(self, digest: str) -> Path:
        return self.root / "trees" / digest

    # ---- hits
    def lookup(self, key: str) -> ActionRecord | None:
        """A record whose output is intact, or None (why a present record was unusable: ``records.unusable``).
        Marks the record as used (for gc)."""
        rec = self.records.read(key)
        if rec is None or not self.output_intact(rec):
            return None
        self.records.touch(key)
        return rec

    def output_intact(self, rec: ActionRecord) -> bool:
        """Every recorded file of the tree is there with its recorded size and content.

        Content is checked through the memo: a file whose (inode, size, mtime) the memo knows
        costs a lookup; a file it does not know (a copied or synced store) is hashed once.
        """
        if not rec.materialized:
            return True
        tree = self.tree_path(rec.digest)
        for rel, (file_id, size) in rec.files.items():
            path = tree / rel
            try:  # the tree's file, its content, and its blob (later trees are linked from it)
                if os.stat(path).st_size != size or self.memo.file(path) != content_digest(file_id) \
                        or not os.path.isfile(self.blob_path(file_id)):
                    return False
            except OSError:
                return False
        return True

    def damaged(self, rec: ActionRecord) -> list[str]:
        """The files of the record's tree whose bytes differ from it, hashed now (not through the
        memo, which cannot see damage no write made: bit rot, a restored stat)."""
        tree, bad = self.tree_path(rec.digest), []
        for rel, (file_id, _size) in sorted(rec.files.items()):
            try:
                if hash_file(tree / rel) != content_digest(file_id):
                    bad.append(rel)
            except OSError:
                bad.append(rel)
        return bad

    def evict(self, rec: ActionRecord, rels: list[str]) -> None:
        """Set aside a damaged tree: the blobs of its damaged files leave cas/, so every record
        holding them (the stages that shared the bytes by hard link) misses and is rebuilt."""
        for rel in rels:
            self.blob_path(rec.files[rel][0]).unlink(missing_ok=True)
        remove_tree(self.tree_path(rec.digest))

    # ---- building
    FULL = 1 << 20  # less free than this, where the store writes, counts as a full disk

    def full_disk(self, exc: BaseException) -> str | None:
        """If ``exc`` came from the store's filesystem filling up, what to tell the user; else None.

        By errno where there is one; otherwise (numpy's ``tofile`` and others report a short write
        without one) by the free space left, measured before the failed build's files are removed."""
        chain, seen = exc, 0
        while chain is not None and seen < 16:
            if isinstance(chain, OSError) and chain.errno in (errno.ENOSPC, errno.EDQUOT):
                break
            chain, seen = chain.__cause__ or chain.__context__, seen + 1
        try:
            free = free_bytes(self.root)
        except OSError:
            return None
        if chain is None and free >= self.FULL:
            return None
        return (f"store.root: the filesystem of {str(self.root)!r} is full ({free / 2**20:.1f} MiB free); "
                "nothing was recorded for this stage: free space or move store.root, then run again")

    def lock(self, key: str):
        from filelock import FileLock

        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / "locks" / f"{key}.lock"))

    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        """Held, shared, while a build runs: ``gc`` (``collecting``) waits until no build holds it,
        so it never removes what a running build uses."""
        fd = self._gc_lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @contextlib.contextmanager
    def collecting(self, waiting: Callable[[], None] = lambda: None) -> Iterator[None]:
        """Held, exclusive, while gc runs; ``waiting`` is called once if builds hold the store."""
        fd = self._gc_lock()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                waiting()
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _gc_lock(self) -> int:
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        return os.open(self.root / "locks" / "gc.lock", os.O_RDWR | os.O_CREAT, 0o644)

    def new_tmp(self, label: str) -> Path:
        path = self.root / "tmp" / f"{label}-{os.getpid()}-{secrets.token_hex(4)}"
        path.mkdir(parents=True)
        return path

    def ingest(self, built: Path, point: Callable[[str], None] = lambda p: None) -> tuple[str, dict[str, tuple[str, int]]]:
        """Move a finished output dir into cas/ and trees/; return (tree digest, files).

        ``files``: {relative path: (file id, size)}. ``point`` is called at ``after_blobs`` and
        ``after_tree`` (instruments: the test fault hook).
        """
        rels = tree_files(built)
        digests = {}
        for rel in rels:
            src = built / rel
            executable = os.stat(src).st_mode & stat.S_IXUSR
            digest = self.memo.file(src) + (EXEC_SUFFIX if executable else "")
            self._put_blob(src, digest)
            digests[rel] = digest
        point("after_blobs")
        digest = tree_digest(digests)
        tree = self.place_tree(digest, digests)
        point("after_tree")
        files = {rel: (d, os.stat(tree / rel).st_size) for rel, d in digests.items()}
        remove_tree(built)
        return digest, files

    def has_blob(self, file_id: str) -> bool:
        """The blob is in cas/ with its content (checked through the memo)."""
        try:
            return self.memo.file(self.blob_path(file_id)) == content_digest(file_id)
        except OSError:
            return False

    def add_blob(self, src: Path, file_id: str) -> None:
        """Move a file whose content digest is known (checked by the caller) into cas/."""
        self._put_blob(src, file_id)

    def place_tree(self, digest: str, digests: dict[str, str]) -> Path:
        """trees/<digest>/ holding these files, hard-linked from their blobs (which must be in cas/)."""
        tree = self.tree_path(digest)
        if not self._tree_matches(tree, digests):
            staging = self.new_tmp(f"tree-{digest[:12]}")
            try:
                for rel, d in digests.items():
                    (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.link(self.blob_path(d), staging / rel)
                    self.memo.note(self.blob_path(d), content_digest(d))  # checked by the caller; a new link moved its ctime
                for dirpath, _dirs, _files in os.walk(staging, topdown=False):
                    os.chmod(dirpath, READ_EXECUTE)
            except BaseException:
                remove_tree(staging)
                raise
            if tree.exists():  # damaged: set aside, never served
                remove_tree(tree)
            tree.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging, tree)
            except OSError:  # another builder put the same tree in place meanwhile
                remove_tree(staging)
                if not self._tree_matches(tree, digests):
                    raise
        return tree

    def _put_blob(self, src: Path, file_id: str) -> None:
        blob = self.blob_path(file_id)
        mode = READ_EXECUTE if file_id.endswith(EXEC_SUFFIX) else READ_ONLY_FILE
        if blob.exists():
            try:
                if self.memo.file(blob) == content_digest(file_id):
                    return
            except OSError:
                pass
        blob.parent.mkdir(parents=True, exist_ok=True)
        if os.stat(src).st_nlink > 1:  # linked from elsewhere (an input tree): copy, never move
            tmp = blob.with_name(f".{file_id}.{secrets.token_hex(4)}")
            try:
                shutil.copy2(src, tmp)
                os.chmod(tmp, mode)
                os.replace(tmp, blob)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        else:
            os.chmod(src, mode)
            os.replace(src, blob)
        self.memo.note(blob, content_digest(file_id))  # hashed by the caller; moved and chmod-ed since

    def _tree_matches(self, tree: Path, digests: dict[str, str]) -> bool:
        """The tree holds exactly these files, each the same file as its blob (hard links)."""
        if not tree.is_dir():
            return False
        try:
            if tree_files(tree) != sorted(digests):
                return False
            for rel, d in digests.items():
                if not os.path.samestat(os.stat(tree / rel), os.stat(self.blob_path(d))):
                    return False
        except OSError:
            return False
        return True


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds, or will hold, ``path`` (its nearest existing ancestor)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def remove_tree(path: Path) -> None:
    """Remove a (possibly read-only) directory tree."""
    if not path.exists():
        return
    for dirpath, _dirs, _files in os.walk(path):
        os.chmod(dirpath, stat.S_IRWXU)
    shutil.rmtree(path)
