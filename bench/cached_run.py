"""Fully cached run vs `python -c "import torch, transformers"`: medians of N, and their ratio.

    python bench/cached_run.py [--model smollm2_135m] [--store artifacts] [--repeats 5]

The first run builds what is missing (not timed); then the cached run and the import
baseline alternate, N times each, in fresh processes.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed:\n{p.stdout}{p.stderr}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--store", default="artifacts")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    runs = Path(tempfile.mkdtemp(prefix="bench-runs-"))
    build = [sys.executable, "-m", "pipeline", f"model={args.model}", f"store.root={args.store}"]
    print(f"warm-up build (not timed): {timed(build + [f'hydra.run.dir={runs}/warm']):.1f} s")
    cached, imports = [], []
    for i in range(args.repeats):
        cached.append(timed(build + [f"hydra.run.dir={runs}/{i}"]))
        imports.append(timed([sys.executable, "-c", "import torch, transformers"]))
    c, b = statistics.median(cached), statistics.median(imports)
    print(f"fully cached run ({args.model}), median of {args.repeats}: {c:.2f} s")
    print(f"baseline `import torch, transformers`, median of {args.repeats}: {b:.2f} s")
    print(f"ratio cached / baseline: {c / b:.2f}  ({b / c:.1f}x faster than the import alone)")


if __name__ == "__main__":
    main()
