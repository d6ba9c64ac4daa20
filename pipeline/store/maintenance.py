"""Store upkeep: list records, verify every stored byte, collect garbage by age and size."""
from __future__ import annotations

import os
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from pipeline.store import ActionRecord, Store, remove_tree
from pipeline.store.digests import tree_digest


def verify(store: Store, damaged: list[ActionRecord] | None = None) -> list[str]:
    """Re-hash every file of every record's tree, and see its blob in cas/; one problem per line (empty: all good).
    The records with a missing or damaged file are appended to ``damaged`` (for ``repair``).

    A record whose tree is gone altogether (evicted by ``verify --repair`` or a build that found
    it damaged) is no problem: it misses, and is rebuilt when next needed."""
    problems = []
    for rec in store.records.all():
        if not rec.materialized:
            continue
        tree = store.tree_path(rec.digest)
        if not tree.is_dir():
            continue
        label = f"{rec.stage} {rec.key[:12]} (tree {rec.digest[:12]})"
        bad = set(store.damaged(rec))
        if bad and damaged is not None:
            damaged.append(rec)
        seen = {}
        for rel, (digest, _size) in rec.files.items():
            if not (tree / rel).is_file():
                problems.append(f"{label}: {rel} is missing")
                continue
            if not store.blob_path(digest).is_file():
                problems.append(f"{label}: {rel}: its blob {digest[:12]} is missing from cas/")
            seen[rel] = "damaged" if rel in bad else digest
            if rel in bad:
                problems.append(f"{label}: {rel} does not match its digest")
        if len(seen) == len(rec.files) and tree_digest(seen) != rec.digest:
            problems.append(f"{label}: tree digest differs")
    return problems


def repair(store: Store, damaged: list[ActionRecord]) -> int:
    """Evict the trees of these records (``verify`` found them damaged) that are damaged still:
    the records holding them miss, and the next builds rebuild them. The number evicted."""
    evicted = 0
    for rec in damaged:
        bad = store.damaged(rec) if store.tree_path(rec.digest).is_dir() else []  # checked again under gc's lock
        if bad:
            store.evict(rec, bad)
            evicted += 1
    return evicted


@dataclass
class GcReport:
    records: list[str] = field(default_factory=list)
    trees: int = 0
    blobs: int = 0
    freed: int = 0
    tmp: int = 0


def gc(store: Store, max_age_s: float | None, max_bytes: int | None, keep_recent_s: float, dry_run: bool = False) -> GcReport:
    """Drop records unused for ``max_age_s``, then the least recently used until the trees
    they point to fit in ``max_bytes``; a record used within ``keep_recent_s`` is never
    dropped. Then remove trees no record points to, blobs no kept record lists, stale tmp/."""
    now = time.time()
    recs = sorted(store.records.used(), key=lambda pair: pair[1])
    keep = {r.key: r for r, _used in recs}
    for r, used in recs:
        if now - used < keep_recent_s:
            continue
        if max_age_s is not None and now - used > max_age_s:
            keep.pop(r.key)
    if max_bytes is not None:
        def total() -> int:
            return sum(r.bytes for r in {r.digest: r for r in keep.values()}.values())
        for r, used in recs:
            if total() <= max_bytes:
                break
            if r.key in keep and now - used >= keep_recent_s:
                keep.pop(r.key)
    report = GcReport()
    for r, _used in recs:
        if r.key not in keep:
            report.records.append(f"{r.stage} {r.key[:12]}")
            if not dry_run:
                store.records.path(r.key).unlink(missing_ok=True)
    live_trees = {r.digest for r in keep.values() if r.materialized}
    def settled(p: Path) -> bool:  # a builder may be between linking and writing its record
        st = p.stat()
        return time.time() - max(st.st_mtime, st.st_ctime) >= keep_recent_s

    for tree in sorted((store.root / "trees").glob("*")):
        if tree.name not in live_trees and settled(tree):
            report.trees += 1
            if not dry_run:
                remove_tree(tree)
    # A blob is live when a kept record lists it (by content, not by link count: a store
    # copied with `cp -r` has no hard links left, and its blobs are still needed).
    live_blobs = {file_id for r in keep.values() if r.materialized for file_id, _size in r.files.values()}
    for blob in sorted((store.root / "cas").glob("*/*")):
        st = blob.stat()
        if blob.name not in live_blobs and settled(blob):
            report.blobs += 1
            report.freed += st.st_size
            if not dry_run:
                blob.unlink()
    for tmp in sorted((store.root / "tmp").glob("*")):
        if now - tmp.stat().st_mtime > max(keep_recent_s, 3600) and _owner_dead(tmp.name):
            report.tmp += 1
            if not dry_run:
                remove_tree(tmp) if tmp.is_dir() else tmp.unlink()
    return report


def _owner_dead(name: str) -> bool:
    """tmp entries carry their builder's pid: a live builder's tmp is never removed."""
    for part in name.replace(".", "-").split("-"):
        if part.isdigit():
            try:
                os.kill(int(part), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            return False
    return True


def listing(store: Store) -> list[dict[str, Any]]:
    rows = []
    for r in sorted(store.records.all(), key=lambda r: r.created):
        rows.append({
            "created": r.created, "model": r.model, "stage": r.stage, "pass": r.pass_name, "key": r.key[:12],
            "digest": r.digest[:12], "size": r.bytes, "seconds": r.seconds,
            "path": str(store.tree_path(r.digest)) if r.materialized else "(in memory)",
        })
    return rows


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def parse_size(text: str) -> int:
    units = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    return int(float(num) * units[unit])


def parse_age(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    t = text.strip().lower()
    return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
