"""The content-addressed store on a filesystem: immutable blobs, hard-linked trees, locks, atomic ingest (writing.py, locks.py).

    <root>/ac/, <root>/index/   action records and the explain index (records.py)
    <root>/cas/<xx>/<digest>    immutable blobs (read-only files)
    <root>/trees/<digest>/      materialized outputs, files hard-linked from cas/ (a package's
                                external data: files of their own, see writing.py)
    <root>/tmp/                 builds in progress (a crash leaves garbage here only)
    <root>/locks/<key>.lock     one builder per key
    <root>/local/               this machine's state (the digest memo); never needed elsewhere

Nothing is created under the root until something is written, so a run that stops on bad
input leaves the store as it was.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from pipeline.store.digests import hash_file
from pipeline.store.files import content_digest, free_bytes, remove_tree
from pipeline.store.locks import StoreLocks
from pipeline.store.memo import DigestMemo, default_memo_path
from pipeline.store.records import ActionRecord, Records
from pipeline.store.writing import TreeWriter


class Store(TreeWriter, StoreLocks):
    """A store root: its records, its memo, hits and their integrity; writing and locking come from its parts."""

    def __init__(self, root: str | Path, memo_path: str | Path | None = None):
        self.root = Path(root).absolute()
        self.records = Records(self.root)
        self.memo = DigestMemo(Path(memo_path) if memo_path else default_memo_path(self.root))

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
            if rel not in rec.owned:  # an owned file is a clone: its damage is its own, the blob is intact
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
