"""Writing into the store: a finished output folder becomes blobs in cas/ and a tree of hard links, atomically.

Build in tmp/, move or copy each file into cas/ (read-only, named by content), stage the tree of
links in tmp/ and rename it into trees/: a tree that exists is complete. A file linked from
elsewhere (an input tree) is copied, never moved. A tree's ``owned`` files are not links but
files of their own (one link: a reflink of the blob where the filesystem has them, else a
copy): tools that refuse a file with several links (the onnx library's external data) open them.
"""
from __future__ import annotations

import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any, Callable, Collection

from pipeline.store.digests import tree_digest, tree_files
from pipeline.store.files import EXEC_SUFFIX, READ_EXECUTE, READ_ONLY_FILE, clone_file, content_digest, remove_tree


class TreeWriter:
    """Ingesting outputs into the store at ``self.root`` (a part of pipeline.store.local.Store)."""

    root: Path
    memo: Any

    def blob_path(self, digest: str) -> Path:
        return self.root / "cas" / digest[:2] / digest

    def tree_path(self, digest: str) -> Path:
        return self.root / "trees" / digest

    def new_tmp(self, label: str) -> Path:
        path = self.root / "tmp" / f"{label}-{os.getpid()}-{secrets.token_hex(4)}"
        path.mkdir(parents=True)
        return path

    def ingest(self, built: Path, point: Callable[[str], None] = lambda p: None,
               owned: Collection[str] = ()) -> tuple[str, dict[str, tuple[str, int]]]:
        """Move a finished output dir into cas/ and trees/; return (tree digest, files).

        ``files``: {relative path: (file id, size)}. ``point`` is called at ``after_blobs`` and
        ``after_tree`` (instruments: the test fault hook). ``owned``: files the tree holds as its own.
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
        tree = self.place_tree(digest, digests, owned)
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

    def place_tree(self, digest: str, digests: dict[str, str], owned: Collection[str] = ()) -> Path:
        """trees/<digest>/ holding these files, hard-linked from their blobs (which must be in cas/),
        the ``owned`` ones cloned from them instead."""
        tree = self.tree_path(digest)
        if not self._tree_matches(tree, digests, owned):
            staging = self.new_tmp(f"tree-{digest[:12]}")
            try:
                for rel, d in digests.items():
                    (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                    if rel in owned:
                        clone_file(self.blob_path(d), staging / rel)
                        os.chmod(staging / rel, READ_EXECUTE if d.endswith(EXEC_SUFFIX) else READ_ONLY_FILE)
                        self.memo.note(staging / rel, content_digest(d))  # a clone of a checked blob
                        continue
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
                if not self._tree_matches(tree, digests, owned):
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

    def _tree_matches(self, tree: Path, digests: dict[str, str], owned: Collection[str] = ()) -> bool:
        """The tree holds exactly these files, each the same file as its blob (hard links), or,
        for the owned ones, a file of its own with the blob's content."""
        if not tree.is_dir():
            return False
        try:
            if tree_files(tree) != sorted(digests):
                return False
            for rel, d in digests.items():
                here = os.stat(tree / rel)
                if rel in owned:
                    if here.st_nlink != 1 or self.memo.file(tree / rel) != content_digest(d):
                        return False
                elif not os.path.samestat(here, os.stat(self.blob_path(d))):
                    return False
        except OSError:
            return False
        return True
