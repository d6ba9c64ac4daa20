"""Action records and the explain index: typed, versioned, portable JSON, written atomically.

    <root>/ac/<key>.json                  an action record (written last, by atomic rename)
    <root>/index/<role>/<model>/<stage>   the latest key of a stage, per model role (for "why")

A record holds what a build means on any machine: the key's ingredients, the output's tree
digest and its files as ``{relative path: [file id, size]}`` (file id = content digest, plus
``.x`` when executable), timings, the pass's result. Never a path, inode or mtime of this
machine: a store copied or synced elsewhere reads the same. A record is read through
``ActionRecord.from_json``, which checks its version and shape: one this engine cannot use is
a miss with a reason (``RecordUnusable``), never a crash.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

VERSION = 1
READS = (1,)  # the versions this engine reads; a record without "version" predates it and is read as 1

_TEXT, _MAPPING = ((str,), "a string"), ((dict,), "a mapping")
FIELDS: dict[str, tuple[tuple[type, ...], str]] = {  # JSON field -> (its JSON types, as said in a reason)
    "stage": _TEXT, "pass": _TEXT, "role": _TEXT, "model": _TEXT, "key": _TEXT, "ingredients": _MAPPING,
    "digest": _TEXT, "materialized": ((bool,), "a boolean"), "files": _MAPPING, "seconds": ((int, float), "a number"),
    "peak_rss_bytes": ((int, type(None)), "an integer or null"), "created": _TEXT, "result": _MAPPING,
    "why": ((str, type(None)), "a string or null"),
}
_KINDS = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number",
          bool: "a boolean", type(None): "null"}


class RecordUnusable(ValueError):
    """A present record this engine cannot use; ``reason`` says why in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ActionRecord:
    """What building one key gave: its ingredients, output digest and files, timings, the pass's result."""

    stage: str
    pass_name: str  # "pass" in JSON
    role: str
    model: str
    key: str
    ingredients: dict[str, Any]
    digest: str
    materialized: bool
    files: dict[str, tuple[str, int]]  # relative path -> (file id, size)
    seconds: float
    peak_rss_bytes: int | None
    created: str
    result: dict[str, Any]
    why: str | None
    version: int = VERSION
    owned: tuple[str, ...] = ()  # files of the tree that are their own (one link; a reflink or copy), not cas/'s links

    @property
    def bytes(self) -> int:
        """The output tree's size: the sum of its files' sizes."""
        return sum(size for _file_id, size in self.files.values())

    def to_json(self) -> dict[str, Any]:
        d = {("pass" if f.name == "pass_name" else f.name): getattr(self, f.name) for f in dataclasses.fields(self)}
        d["files"] = {rel: list(entry) for rel, entry in self.files.items()}
        if self.owned:
            d["owned"] = list(self.owned)
        else:
            d.pop("owned")  # written only where there are some: other records read as before
        return d

    def text(self) -> str:
        """The record as stored, locally and on a remote."""
        return json.dumps(self.to_json(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, d: Any) -> ActionRecord:
        """The record a JSON document holds; RecordUnusable if its version or shape is not one this engine reads."""
        if not isinstance(d, dict):
            raise RecordUnusable(f"not a JSON object but {_kind(d)}")
        version = d.get("version", 1)
        if type(version) is not int or version not in READS:
            raise RecordUnusable(f"version {version!r} is not one this engine reads ({', '.join(map(str, READS))})")
        unknown = sorted(set(d) - set(FIELDS) - {"version", "owned"})
        if unknown:
            raise RecordUnusable(f"unknown fields {unknown}")
        for name, (types, what) in FIELDS.items():
            if name not in d:
                raise RecordUnusable(f"field {name!r} is missing")
            if type(d[name]) not in types:
                raise RecordUnusable(f"field {name!r} is {_kind(d[name])}, not {what}")
        files = {}
        for rel, entry in d["files"].items():
            if not (type(entry) is list and len(entry) == 2 and type(entry[0]) is str and type(entry[1]) is int
                    and entry[1] >= 0):
                raise RecordUnusable(f"files entry {rel!r} is not [file id, size]")
            files[rel] = (entry[0], entry[1])
        owned = d.get("owned", [])
        if not (type(owned) is list and all(type(rel) is str and rel in files for rel in owned)):
            raise RecordUnusable("field 'owned' is not a list of the record's files")
        plain = {name: d[name] for name in FIELDS if name not in ("pass", "files")}
        return cls(pass_name=d["pass"], files=files, version=version, owned=tuple(owned), **plain)

    @classmethod
    def parse(cls, data: str | bytes, key: str) -> ActionRecord:
        """The record of ``key`` stored as ``data``; RecordUnusable if it is not one (torn, another version, another key)."""
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise RecordUnusable(f"not JSON: {e}") from None
        rec = cls.from_json(doc)
        if rec.key != key:
            raise RecordUnusable(f"it holds key {rec.key[:16]}…, not its own")
        return rec


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


class Records:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.unusable: dict[str, str] = {}  # key -> why its present record could not be used (of those read)

    def path(self, key: str) -> Path:
        return self.root / "ac" / f"{key}.json"

    def index_path(self, role: str, model: str, stage: str) -> Path:
        return self.root / "index" / _safe(role) / _safe(model) / _safe(stage)

    def read(self, key: str) -> ActionRecord | None:
        """The record of ``key``, or None: absent, or unusable (the reason kept in ``unusable``); never raises."""
        try:
            rec = ActionRecord.parse(self.path(key).read_bytes(), key)
        except FileNotFoundError:
            return None
        except OSError as e:
            self.unusable[key] = f"unreadable: {e.strerror}"
            return None
        except RecordUnusable as e:
            self.unusable[key] = e.reason
            return None
        self.unusable.pop(key, None)
        return rec

    def write(self, rec: ActionRecord) -> None:
        """The record, then the index entry of its role, model and stage."""
        atomic_write(self.path(rec.key), rec.text(), self.root / "tmp")
        self.unusable.pop(rec.key, None)
        atomic_write(self.index_path(rec.role, rec.model, rec.stage), rec.key, self.root / "tmp")

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

    def latest(self, role: str, model: str, stage: str) -> ActionRecord | None:
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

    def used(self) -> Iterator[tuple[ActionRecord, float]]:
        """Every usable record with when it was last used (its file's mtime, local state: never in the record)."""
        for p in sorted((self.root / "ac").glob("*.json")):
            rec = self.read(p.stem)
            if rec is None:
                continue
            try:
                used = p.stat().st_mtime
            except OSError:  # removed meanwhile
                continue
            yield rec, used

    def all(self) -> list[ActionRecord]:
        return [rec for rec, _used in self.used()]


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


def now_iso(precise: bool = False) -> str:
    """Local time with its offset; ``precise`` adds milliseconds (records: stages of one run that end
    in the same second still list in the order they ran)."""
    now = time.time()
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
    fraction = f".{int(now * 1000) % 1000:03d}" if precise else ""
    return seconds + fraction + time.strftime("%z", time.localtime(now))
