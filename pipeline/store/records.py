"""Action records and the explain index: portable JSON, written atomically.

    <root>/ac/<key>.json                  an action record (written last, by atomic rename)
    <root>/index/<role>/<model>/<stage>   the latest key of a stage, per model role (for "why")

A record holds what a build means on any machine: the key's ingredients, the output's tree
digest and its files as ``{relative path: [file id, size]}`` (file id = content digest, plus
``.x`` when executable), timings, the pass's result. Never a path, inode or mtime of this
machine: a store copied or synced elsewhere reads the same.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

RECORD_FIELDS = ("stage", "pass", "role", "model", "key", "ingredients", "digest", "materialized", "files",
                 "seconds", "peak_rss_bytes", "created", "result", "why")


class Records:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / "ac" / f"{key}.json"

    def index_path(self, role: str, model: str, stage: str) -> Path:
        return self.root / "index" / _safe(role) / _safe(model) / _safe(stage)

    def read(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.path(key).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable: treated as absent, rebuilt, replaced

    def write(self, rec: dict[str, Any]) -> None:
        """The record, then the index entry of its role, model and stage."""
        unknown = set(rec) - set(RECORD_FIELDS)
        if unknown:
            raise ValueError(f"action record: unknown fields {sorted(unknown)}")
        atomic_write(self.path(rec["key"]), json.dumps(rec, indent=1, sort_keys=True), self.root / "tmp")
        atomic_write(self.index_path(rec["role"], rec["model"], rec["stage"]), rec["key"], self.root / "tmp")

    def note_used(self, role: str, model: str, stage: str, key: str) -> None:
        """A hit makes its record the latest of its stage too (so the next "why" compares with
        what was last used); written only when it changes, without fsync (it is a hint)."""
        path = self.index_path(role, model, stage)
        try:
            if path.read_text().strip() == key:
                return
        except OSError:
            pass
        tmp = self.root / "tmp" / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(key)
            os.replace(tmp, path)
        except OSError:  # a full disk: the hint is skipped, the hit still served
            tmp.unlink(missing_ok=True)

    def latest(self, role: str, model: str, stage: str) -> dict[str, Any] | None:
        try:
            key = self.index_path(role, model, stage).read_text().strip()
        except OSError:
            return None
        return self.read(key)

    def touch(self, key: str) -> None:
        """Mark a record as used now (gc drops the least recently used first)."""
        try:
            os.utime(self.path(key))
        except OSError:
            pass

    def all(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted((self.root / "ac").glob("*.json")):
            try:
                rec = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            rec["_used"] = p.stat().st_mtime
            out.append(rec)
        return out


def atomic_write(path: Path, text: str, tmp_dir: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
