"""What the bench scripts share: a whole `python -m pipeline` process, timed."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed_pipeline(args: list[str]) -> float:
    """Wall seconds of ``python -m pipeline <args>`` in a fresh process; exits the bench on failure."""
    started = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench: {' '.join(args)} failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return time.perf_counter() - started
