"""``python -m pipeline.store ls | verify | gc``: look after the store."""
from __future__ import annotations

import argparse
import json
import re
import sys

from pipeline.store import ActionRecord, Store
from pipeline.store.maintenance import gc, human, listing, parse_age, parse_size, repair, verify


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.store", description=__doc__)
    ap.add_argument("--root", default="artifacts", help="store root (store.root; default: artifacts)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("ls", help="list action records, oldest first")
    ls.add_argument("--json", action="store_true")
    v = sub.add_parser("verify", help="re-hash every stored file; exit 1 on damage")
    v.add_argument("--repair", action="store_true",
                   help="evict the damaged trees (and their blobs), so the next builds rebuild them")
    g = sub.add_parser("gc", help="remove old or excess records and what only they used")
    g.add_argument("--max-age", help="drop records unused for longer than this (e.g. 30d, 12h)")
    g.add_argument("--max-size", help="then drop least recently used until trees fit (e.g. 50G)")
    g.add_argument("--keep-recent", default="1h", help="never drop a record used within this (default 1h)")
    g.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    store = Store(args.root)
    if not store.root.is_dir():
        print(f"error: --root: {str(store.root)!r} does not exist; allowed: a store root", file=sys.stderr)
        return 2
    if args.cmd == "ls":
        rows = listing(store)
        if args.json:
            print(json.dumps(rows, indent=1))
        for r in [] if args.json else rows:
            print(f"{re.sub(r'[.][0-9]+', '', r['created'])}  {r['model']:<14} {r['stage']:<15} {r['key']}  {human(r['size']):>10}"
                  f"  {r['seconds']:8.2f} s  {r['path']}")
        if not args.json:
            stored = sum(p.stat().st_size for p in (store.root / "cas").glob("*/*"))
            print(f"{len(rows)} records; their trees hold {human(sum(r['size'] for r in rows))}, "
                  f"stored once in cas/ as {human(stored)}")
        return 0
    if args.cmd == "verify":
        damaged: list[ActionRecord] = []
        problems = verify(store, damaged)
        for p in problems:
            print(p)
        print(f"verify: {len(store.records.all())} records, {len(problems)} problems")
        if problems and args.repair:
            with store.collecting(lambda: print("verify: builds are running in this store; waiting for them to finish",
                                                flush=True)):
                evicted = repair(store, damaged)
            print(f"verify: repaired: {evicted} damaged trees evicted; the next builds rebuild them")
        return 1 if problems else 0
    try:
        max_age = parse_age(args.max_age) if args.max_age else None
        max_size = parse_size(args.max_size) if args.max_size else None
        keep = parse_age(args.keep_recent)
    except (ValueError, KeyError, IndexError) as exc:
        print(f"error: gc: bad age or size ({exc}); allowed: 30d, 12h, 90m, 45s / 50G, 512M", file=sys.stderr)
        return 2
    if args.dry_run:
        rep = gc(store, max_age, max_size, keep, dry_run=True)
    else:  # never while a build runs: it may be using what gc would remove
        with store.collecting(lambda: print("gc: builds are running in this store; waiting for them to finish", flush=True)):
            rep = gc(store, max_age, max_size, keep)
    verb = "would remove" if args.dry_run else "removed"
    print(f"gc: {verb} {len(rep.records)} records, {rep.trees} trees, {rep.blobs} blobs "
          f"({human(rep.freed)}), {rep.tmp} stale tmp entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
