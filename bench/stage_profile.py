"""First-run time and peak memory of every stage, building a model in a fresh store.

    python bench/stage_profile.py [--model smollm2_135m] [--repeats 1]

Peak memory is the process's resident set sampled every 20 ms while the stage ran (the
executor's instrument), so a stage's figure includes what earlier stages left in memory.
The baseline is the size of the model's fp32 weights (the load stage's safetensors): the
``x weights`` column says how many times that a stage's peak is.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_once(model: str) -> tuple[dict, int]:
    """(summary, bytes of the fp32 weights) of a build in a fresh store."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    cmd = [sys.executable, "-m", "pipeline", f"model={model}", f"store.root={tmp / 'store'}", f"hydra.run.dir={tmp / 'run'}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench: build failed:\n{p.stdout}{p.stderr}")
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    load = next(s for s in summary["stages"] if s["name"] == "load")
    weights = sum(f.stat().st_size for f in (tmp / "store" / "trees" / load["digest"]).glob("*.safetensors"))
    subprocess.run(["chmod", "-R", "u+w", str(tmp)], check=False)  # store trees are read-only
    shutil.rmtree(tmp, ignore_errors=True)
    return summary, weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    built = [build_once(args.model) for _ in range(args.repeats)]
    runs, weights = [b[0] for b in built], built[0][1]
    names = [s["name"] for s in runs[0]["stages"]]
    per = {n: [next(s for s in r["stages"] if s["name"] == n) for r in runs] for n in names}
    total = sum(statistics.median(x["seconds"] for x in per[n]) for n in names)
    print(f"{args.model}: first run of every stage, median of {args.repeats} fresh store(s)")
    print(f"baseline: fp32 weights {weights / 2**20:.0f} MiB")
    print(f"{'stage':<10} {'seconds':>8} {'share':>7} {'peak RSS':>10} {'x weights':>10}")
    for n in names:
        sec = statistics.median(x["seconds"] for x in per[n])
        rss = statistics.median(x["peak_rss_bytes"] or 0 for x in per[n])
        print(f"{n:<10} {sec:8.2f} {sec / total:7.1%} {rss / 2**20:6.0f} MiB {rss / weights:10.1f}")
    print(f"{'total':<10} {total:8.2f}")
    v = runs[-1]["validation"]
    print(f"validation: passed={v['passed']} tokens={v['tokens_compared']} max|dlogit|={v['max_abs_logit_diff']:.2e}")


if __name__ == "__main__":
    main()
