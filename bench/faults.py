"""Builds SIGKILLed at random moments: every following run completes and validates, verify finds nothing.

    python bench/faults.py [--kills 20] [--seed 0]

One store (bench/.cache/faults-store, emptied first). Each round takes a new model.seed (so there
is work to interrupt), starts ``python -m pipeline model=tiny_llama``, kills it with SIGKILL
after a random delay drawn over a cold build's duration (measured first, in another store),
then runs the same build to completion and ``pipeline.store verify``. Prints where each kill
landed and the counts.
"""
from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(store: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "model=tiny_llama", f"store.root={store}", *overrides],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    cache = ROOT / "bench" / ".cache"
    store, probe = cache / "faults-store", cache / "faults-probe"
    for path in (store, probe):
        if path.exists():
            subprocess.run(["chmod", "-R", "u+w", str(path)], check=True)
            shutil.rmtree(path)
    started = time.perf_counter()
    out, _ = build(probe).communicate()
    cold = time.perf_counter() - started
    print(f"a cold build takes {cold:.1f} s; kills are drawn uniformly over [0, {cold:.1f}] s")
    landed: Counter[str] = Counter()
    completed = validated = clean = 0
    for i in range(args.kills):
        # a new seed each round: new weights, so every stage has work to interrupt
        overrides = [f"compile.ctx_len={rng.choice([64, 128, 192, 256])}", f"model.seed={args.seed * 1000 + i}"]
        proc = build(store, *overrides)
        time.sleep(rng.uniform(0, cold))
        proc.send_signal(signal.SIGKILL)
        text = proc.communicate()[0]
        running = [line.split(":")[0] for line in text.splitlines() if ": running" in line]
        where = f"during {running[-1]}" if proc.returncode == -9 and running else (
            "after it finished" if proc.returncode != -9 else "before any stage")
        landed[where] += 1
        after = subprocess.run([sys.executable, "-m", "pipeline", "model=tiny_llama", f"store.root={store}", *overrides],
                               cwd=ROOT, capture_output=True, text=True)
        completed += after.returncode == 0
        validated += "validation: passed" in after.stdout
        verify = subprocess.run([sys.executable, "-m", "pipeline.store", "--root", str(store), "verify"], cwd=ROOT,
                                capture_output=True, text=True)
        clean += verify.returncode == 0 and verify.stdout.strip().endswith(" 0 problems")
        print(f"kill {i + 1:2d} ({' '.join(overrides)}): {where}; the next run exit {after.returncode}, "
              f"{'validated' if 'validation: passed' in after.stdout else 'NOT validated'}; verify: "
              f"{verify.stdout.strip().splitlines()[-1] if verify.stdout.strip() else verify.returncode}")
    print(f"{args.kills} kills ({', '.join(f'{n} {w}' for w, n in landed.most_common())}); following runs: "
          f"{completed}/{args.kills} completed, {validated}/{args.kills} validated; verify clean after {clean}/{args.kills}")


if __name__ == "__main__":
    main()
