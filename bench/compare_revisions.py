"""This checkout against an earlier revision, in the same run: first build and fully cached run of a model.

    python bench/compare_revisions.py --base <git revision> [--model smollm2_135m] [--builds 1] [--repeats 5]

The base revision is checked out in a temporary git worktree and run from there (first on
PYTHONPATH), with this checkout's venv. For each side, in alternation: a first build in an
empty store (wall time of the whole command), then ``--repeats`` fully cached runs of it,
each a fresh process. Medians, and the ratio this checkout / base (below 1: faster).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} (in {cwd}) failed:\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision to compare with (e.g. HEAD~3, a commit)")
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--builds", type=int, default=1, help="first builds per side (each in an empty store)")
    ap.add_argument("--repeats", type=int, default=5, help="cached runs per side")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-revs-"))
    base = work / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT, check=True,
                   capture_output=True)
    sides = {"base": base, "this": ROOT}
    build = {k: [] for k in sides}
    cached = {k: [] for k in sides}
    try:
        for i in range(args.builds):
            for side, tree in sides.items():
                store = work / f"store-{side}-{i}"
                cmd = [sys.executable, "-m", "pipeline", f"model={args.model}", f"store.root={store}",
                       f"hydra.run.dir={work / f'run-{side}-{i}'}"]
                build[side].append(timed(cmd, tree))
        for i in range(args.repeats):
            for side, tree in sides.items():
                cmd = [sys.executable, "-m", "pipeline", f"model={args.model}", f"store.root={work / f'store-{side}-0'}",
                       f"hydra.run.dir={work / f'cached-{side}-{i}'}"]
                cached[side].append(timed(cmd, tree))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
        subprocess.run(["chmod", "-R", "u+w", str(work)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"{args.model}: this checkout vs base {args.base} ({commit}), same machine, alternating")
    print(f"{'':<34}{'base':>9}{'this':>9}{'this/base':>11}")
    for label, data, n in (("first build, median of", build, args.builds), ("fully cached run, median of", cached, args.repeats)):
        b, t = statistics.median(data["base"]), statistics.median(data["this"])
        print(f"{label + f' {n}':<34}{b:8.2f}s{t:8.2f}s{t / b:11.2f}")


if __name__ == "__main__":
    main()
