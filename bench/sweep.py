"""A 12-point CPU sweep with 2 joblib workers over one store, against the 12 points run one by one, each on an empty store.

    python bench/sweep.py [--model smollm2_135m] [--workers 2]

Points: hw.num_cores=1,2,4 x compile.prefill_seq_len=32,128 x compile.ctx_len=256,512 (full
builds with validation). The independent runs are what a user without the store pays: every
point loads, exports and compiles from scratch. The floor of the sweep is one load / transform /
export / rewrite / reference plus each point's compile, package and validate, run one after the
other; it is computed from the independent runs' own stage times. One round (the independent
runs take most of the time); wall clock of whole processes.
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
from pathlib import Path

from common import timed_pipeline

AXES = {"hw.num_cores": ["1", "2", "4"], "compile.prefill_seq_len": ["32", "128"], "compile.ctx_len": ["256", "512"]}
SHARED = ("load", "transform", "export", "rewrite", "reference")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    points = [[f"{k}={v}" for k, v in zip(AXES, values)] for values in itertools.product(*AXES.values())]
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        store = Path(tmp) / "sweep-store"
        sweep_dir = Path(tmp) / "sweep"
        grid = [f"{k}={','.join(v)}" for k, v in AXES.items()]
        sweep_s = timed_pipeline(["-m", f"model={args.model}", f"store.root={store}", f"hydra.sweep.dir={sweep_dir}",
                       "hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.workers}", *grid])
        report = (sweep_dir / "sweep.md").read_text()
        alone_s, shared, per_point = 0.0, 0.0, 0.0
        for i, point in enumerate(points):
            own = Path(tmp) / f"alone-{i}"
            run_dir = own / "run"
            alone_s += timed_pipeline([f"model={args.model}", f"store.root={own / 'store'}", f"hydra.run.dir={run_dir}", *point])
            stages = {s["name"]: s["seconds"] for s in json.loads((run_dir / "summary.json").read_text())["stages"]}
            shared = max(shared, sum(stages.get(s, 0) for s in SHARED))
            per_point += sum(t for s, t in stages.items() if s not in SHARED)
            shutil.rmtree(own)
    floor = shared + per_point
    axes = " x ".join(f"{k}={','.join(v)}" for k, v in AXES.items())
    print(f"{args.model}: 12 points ({axes}), full builds with validation")
    print(f"12 independent runs, each on an empty store:   {alone_s:7.1f} s")
    print(f"one sweep, {args.workers} joblib workers, one store:      {sweep_s:7.1f} s   ({alone_s / sweep_s:.1f}x faster)")
    print(f"floor: one load/export/... ({shared:.1f} s) + 12 x compile/package/validate ({per_point:.1f} s) = {floor:.1f} s "
          f"of stage time; sweep / floor {sweep_s / floor:.2f}")
    print("sweep report (sweep.md):")
    print(report)


if __name__ == "__main__":
    main()
