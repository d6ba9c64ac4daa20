"""Reproducible builds of SmolLM2: its export and package built in fresh stores, digests compared.

Each run builds smollm2_135m up to the package in a new store, in a fresh process, under one
condition in turn: one OpenMP thread, two, and two under a busy CPU (``--busy`` Python loops
beside it, OMP_DYNAMIC=true so libgomp sizes its thread teams by the load average). It prints
each run's export and package digests with the export stage's seconds and the run's wall
seconds; exit 1 if any digest differs. Each store is deleted after its run (about 2 GB).

    python bench/reproducible.py [--runs 3] [--busy 3] [--scratch DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONDITIONS = (("1 thread", {"OMP_NUM_THREADS": "1"}, False),
              ("2 threads", {"OMP_NUM_THREADS": "2"}, False),
              ("2 threads, loaded", {"OMP_NUM_THREADS": "2", "OMP_DYNAMIC": "true"}, True))
BUILD = r"""
import json, sys
from pipeline.api import build, compose

result = build(compose(["model=smollm2_135m", f"store.root={sys.argv[1]}"]), echo=lambda line: None, goals=("package",))
print(json.dumps({s.name: [s.digest, s.seconds, s.status] for s in result.stages}))
"""


def build(store: Path, env: dict[str, str]) -> dict[str, list]:
    """stage -> [digest, seconds, status] of one build into ``store``, in a fresh process."""
    p = subprocess.run([sys.executable, "-c", BUILD, str(store)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, **env})
    if p.returncode != 0:
        sys.exit(f"bench: the build failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run(index: int, scratch: Path, busy: int) -> tuple[str, str, str]:
    name, env, loaded = CONDITIONS[index % len(CONDITIONS)]
    store = scratch / f"store-{index}"
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy if loaded else 0)]
    started = time.perf_counter()
    try:
        stages = build(store, env)
    finally:
        for p in loops:
            p.kill()
            p.wait()
        shutil.rmtree(store, ignore_errors=True)
    wall = time.perf_counter() - started
    if any(stages[s][2] != "ran" for s in ("export", "package")):
        sys.exit(f"bench: run {index}: a fresh store had a hit: {stages}")
    export, package = stages["export"][0], stages["package"][0]
    print(f"{index + 1}  {name:<18} export {export[:16]}  package {package[:16]}  "
          f"export stage {stages['export'][1]:6.1f} s  run {wall:6.1f} s", flush=True)
    return name, export, package


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="builds, cycling through 1 thread, 2, 2 loaded (default 3)")
    ap.add_argument("--busy", type=int, default=3, help="busy loops beside a loaded build (default 3)")
    ap.add_argument("--scratch", type=Path, default=None, help="where the stores go (default: a new temp dir)")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="reproducible-", dir=args.scratch))
    try:
        results = [run(i, scratch, args.busy) for i in range(args.runs)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    outcomes = {(export, package) for _, export, package in results}
    print(f"{len(results)} builds: {'all digests equal' if len(outcomes) == 1 else f'{len(outcomes)} different outcomes'}")
    return 0 if len(outcomes) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
