"""Each stage's seconds, peak RSS (as a multiple of the fp32 weights) and bytes written, for a random model.

    python bench/memory_profile.py [--size mid] [--hw cpu] [--keep]

One build in a fresh store, one process (as a user runs it), so a stage's peak includes what
earlier stages left in memory (and the imports: a few hundred MB). The baseline is the model's
fp32 weights (parameters x 4 bytes, from the config's shapes): ``x weights`` is a stage's peak
over it. Bytes written: the stage's output tree (files linked from other trees counted too).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Llama-shaped random configs (SmolLM2's tokenizer, so the vocabulary is at least its 49152).
SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "mid": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=8),
    "large": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
                  num_key_value_heads=8),
}
VOCAB = 49152


def fp32_bytes(size: dict) -> int:
    h, i, n = size["hidden_size"], size["intermediate_size"], size["num_hidden_layers"]
    kv = h // size["num_attention_heads"] * size["num_key_value_heads"]
    layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return 4 * (2 * VOCAB * h + n * layer + h)


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="mid")
    ap.add_argument("--hw", default="cpu")
    ap.add_argument("--keep", action="store_true", help="keep the store (printed) instead of deleting it")
    ap.add_argument("overrides", nargs="*", help="more pipeline overrides")
    args = ap.parse_args()
    size = SIZES[args.size]
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    cmd = [sys.executable, "-m", "pipeline", "model=tiny_llama", f"hw={args.hw}", f"store.root={tmp / 'store'}",
           f"hydra.run.dir={tmp / 'run'}", *(f"model.hf_config.{k}={v}" for k, v in size.items()), *args.overrides]
    started = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if p.returncode != 0:
        sys.exit(f"bench: build failed ({' '.join(cmd[2:])}):\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    weights = fp32_bytes(size)
    print(f"{args.size} random llama {size}, vocab {VOCAB}, hw={args.hw}: one fresh build, {wall:.0f} s wall")
    print(f"baseline: fp32 weights {weights / 2**20:.0f} MiB")
    print(f"{'stage':<10} {'seconds':>8} {'peak RSS':>10} {'x weights':>10} {'written':>10}")
    for s in summary["stages"]:
        rss = s.get("peak_rss_bytes") or 0
        tree = tmp / "store" / "trees" / s["digest"] if s.get("digest") else None
        written = tree_bytes(tree) if tree is not None and tree.is_dir() else 0
        print(f"{s['name']:<10} {s['seconds']:8.2f} {rss / 2**20:6.0f} MiB {rss / weights:10.2f} {written / 2**20:6.0f} MiB")
    v = summary.get("validation") or {}
    print(f"validation: passed={v.get('passed')} tokens={v.get('tokens_compared')}")
    if args.keep:
        print(f"store kept: {tmp}")
        return
    subprocess.run(["chmod", "-R", "u+w", str(tmp)], check=False)  # store trees are read-only
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
