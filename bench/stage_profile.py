"""First-run time and peak memory of every stage, building a model in a fresh store.

    python bench/stage_profile.py [--model smollm2_135m] [--repeats 1]

Peak memory is the process's resident set sampled every 20 ms while the stage ran (the
executor's instrument), so a stage's figure includes what earlier stages left in memory.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_once(model: str) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    cmd = [sys.executable, "-m", "pipeline", f"model={model}", f"store.root={tmp / 'store'}", f"hydra.run.dir={tmp / 'run'}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench: build failed:\n{p.stdout}{p.stderr}")
    return json.loads((tmp / "run" / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    runs = [build_once(args.model) for _ in range(args.repeats)]
    names = [s["name"] for s in runs[0]["stages"]]
    per = {n: [next(s for s in r["stages"] if s["name"] == n) for r in runs] for n in names}
    total = sum(statistics.median(x["seconds"] for x in per[n]) for n in names)
    print(f"{args.model}: first run of every stage, median of {args.repeats} fresh store(s)")
    print(f"{'stage':<10} {'seconds':>8} {'share':>7} {'peak RSS':>10}")
    for n in names:
        sec = statistics.median(x["seconds"] for x in per[n])
        rss = statistics.median(x["peak_rss_bytes"] or 0 for x in per[n])
        print(f"{n:<10} {sec:8.2f} {sec / total:7.1%} {rss / 2**20:8.0f} MiB")
    print(f"{'total':<10} {total:8.2f}")
    v = runs[-1]["validation"]
    print(f"validation: passed={v['passed']} tokens={v['tokens_compared']} max|dlogit|={v['max_abs_logit_diff']:.2e}")


if __name__ == "__main__":
    main()
