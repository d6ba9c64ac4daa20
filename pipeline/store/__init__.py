"""The content-addressed store: action records, immutable blobs, hard-linked trees, locks.

    <root>/ac/<key>.json       action record (written last, by atomic rename)
    <root>/cas/<xx>/<digest>   immutable blobs (read-only files)
    <root>/trees/<digest>/     materialized outputs, files hard-linked from cas/
    <root>/tmp/                builds in progress (a crash leaves garbage here only)
    <root>/locks/<key>.lock    one builder per key
    <root>/index/<model>/<stage>   latest key of a stage for a model (for "why")
    <root>/state.db            digest memo

Nothing is created under the root until something is written, so a run that stops on bad
input leaves the store as it was.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.store.digests import DigestMemo, tree_digest, tree_files

READ_ONLY_FILE = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
READ_EXECUTE = READ_ONLY_FILE | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH  # folders, and executable files
# A file's id in cas/ is its content digest, plus this suffix when it is executable (a
# script like compile.sh): the mode is part of what is stored, so it survives the store.
EXEC_SUFFIX = ".x"


def content_digest(file_id: str) -> str:
    return file_id.removesuffix(EXEC_SUFFIX)


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()
        self.memo = DigestMemo(self.root / "state.db")

    # ---- paths
    def record_path(self, key: str) -> Path:
        return self.root / "ac" / f"{key}.json"

    def blob_path(self, digest: str) -> Path:
        return self.root / "cas" / digest[:2] / digest

    def tree_path(self, digest: str) -> Path:
        return self.root / "trees" / digest

    def index_path(self, model: str, stage: str) -> Path:
        return self.root / "index" / _safe(model) / _safe(stage)

    # ---- records
    def read_record(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.record_path(key).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable: treated as absent, rebuilt, replaced

    def lookup(self, key: str) -> dict[str, Any] | None:
        """A record whose output is intact, or None. Marks the record as used (for gc)."""
        rec = self.read_record(key)
        if rec is None or not self.output_intact(rec):
            return None
        try:
            os.utime(self.record_path(key))
        except OSError:
            pass
        return rec

    def output_intact(self, rec: dict[str, Any]) -> bool:
        """Every recorded file of the tree is there with its recorded size and mtime."""
        if not rec.get("materialized"):
            return True
        tree = self.tree_path(rec["digest"])
        for rel, (_digest, size, mtime_ns) in rec["files"].items():
            try:
                st = os.stat(tree / rel)
            except OSError:
                return False
            if st.st_size != size or st.st_mtime_ns != mtime_ns:
                return False
        return True

    def write_record(self, rec: dict[str, Any]) -> None:
        path = self.record_path(rec["key"])
        _atomic_write(path, json.dumps(rec, indent=1, sort_keys=True), self.root / "tmp")
        _atomic_write(self.index_path(rec["model"], rec["stage"]), rec["key"], self.root / "tmp")

    def latest(self, model: str, stage: str) -> dict[str, Any] | None:
        try:
            key = self.index_path(model, stage).read_text().strip()
        except OSError:
            return None
        return self.read_record(key)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted((self.root / "ac").glob("*.json")):
            try:
                rec = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            rec["_used"] = p.stat().st_mtime
            out.append(rec)
        return out

    # ---- building
    def lock(self, key: str):
        from filelock import FileLock

        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / "locks" / f"{key}.lock"))

    def new_tmp(self, label: str) -> Path:
        path = self.root / "tmp" / f"{label}-{os.getpid()}-{secrets.token_hex(4)}"
        path.mkdir(parents=True)
        return path

    def ingest(self, built: Path, fault: Callable[[str], None] = lambda p: None) -> tuple[str, dict[str, list]]:
        """Move a finished output dir into cas/ and trees/; return (tree digest, files).

        ``files``: {relative path: [file id, size, mtime_ns]} as the tree holds them.
        """
        rels = tree_files(built)
        digests = {}
        for rel in rels:
            src = built / rel
            executable = os.stat(src).st_mode & stat.S_IXUSR
            digest = self.memo.file(src) + (EXEC_SUFFIX if executable else "")
            self._put_blob(src, digest)
            digests[rel] = digest
        fault("after_blobs")
        digest = tree_digest(digests)
        tree = self.tree_path(digest)
        if not self._tree_matches(tree, digests):
            staging = self.new_tmp(f"tree-{digest[:12]}")
            for rel, d in digests.items():
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                os.link(self.blob_path(d), staging / rel)
            for dirpath, _dirs, _files in os.walk(staging, topdown=False):
                os.chmod(dirpath, READ_EXECUTE)
            if tree.exists():  # damaged: set aside, never served
                remove_tree(tree)
            tree.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging, tree)
            except OSError:  # another builder put the same tree in place meanwhile
                if not self._tree_matches(tree, digests):
                    raise
                remove_tree(staging)
        fault("after_tree")
        files = {}
        for rel, d in digests.items():
            st = os.stat(tree / rel)
            files[rel] = [d, st.st_size, st.st_mtime_ns]
        remove_tree(built)
        return digest, files

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
            shutil.copy2(src, tmp)
            os.chmod(tmp, mode)
            os.replace(tmp, blob)
        else:
            os.chmod(src, mode)
            os.replace(src, blob)
        self.memo.file(blob)

    def _tree_matches(self, tree: Path, digests: dict[str, str]) -> bool:
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


def remove_tree(path: Path) -> None:
    """Remove a (possibly read-only) directory tree."""
    if not path.exists():
        return
    for dirpath, _dirs, _files in os.walk(path):
        os.chmod(dirpath, stat.S_IRWXU)
    shutil.rmtree(path)


def _atomic_write(path: Path, text: str, tmp_dir: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
