"""A cold store with a remote tier that holds the build, against building from scratch, one run.

    python bench/remote.py [--model smollm2_135m] [--rounds 3]

A first store builds the model and pushes it to a folder remote (store.push=true). Then, per
round, in fresh processes and empty store roots: a run against that remote (every stage a
hit: records and blobs pulled, digests checked, trees made locally) and a build from scratch
with no remote. Medians of whole-process wall time.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import timed_pipeline



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        remote = Path(tmp) / "remote"
        timed_pipeline([f"model={args.model}", f"store.root={tmp}/ci-store", f"store.remote={remote}", "store.push=true"])
        size = sum(p.stat().st_size for p in remote.rglob("*") if p.is_file())
        pulled, scratch = [], []
        for i in range(args.rounds):
            pulled.append(timed_pipeline([f"model={args.model}", f"store.root={tmp}/cold-{i}", f"store.remote={remote}"]))
            scratch.append(timed_pipeline([f"model={args.model}", f"store.root={tmp}/scratch-{i}"]))
    p, s = statistics.median(pulled), statistics.median(scratch)
    print(f"{args.model}: remote holds {size / 1e6:.0f} MB; medians of {args.rounds} rounds, fresh processes, empty stores")
    print(f"cold store against the remote (all hits, pulled):  {p:6.1f} s")
    print(f"build from scratch (no remote):                     {s:6.1f} s")
    print(f"ratio pulled / scratch: {p / s:.2f} ({s / p:.1f}x faster)")


if __name__ == "__main__":
    main()
