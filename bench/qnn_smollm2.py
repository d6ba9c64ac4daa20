"""SmolLM2-135M on hw=qnn_htp: how long each stage takes when QNN's HTP simulator compiles and validates it.

    python bench/qnn_smollm2.py [--eval-tokens 256] [--store DIR]

Builds model=smollm2_135m for hw=qnn_htp (prefill and decode context binaries) and validates it
on the QNN EP through the teacher-forced gate over ``--eval-tokens`` tokens; prints every
stage's seconds, each context binary's compile seconds and size, the gate's figures, and the
QNN package's tokens/s against the named baseline measured in the same run: the fp32 PyTorch
reference on the same positions (the simulator's speed is the x86 host's, not the NPU's).
Slow: on a shared 2-core machine the validate stage had not finished after 55 minutes (docs/qnn.md).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-tokens", type=int, default=256)
    parser.add_argument("--store", type=Path, default=None, help="store root (default: a fresh temporary one)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-qnn-"))
    store = args.store or tmp / "store"
    cmd = [sys.executable, "-m", "pipeline", "model=smollm2_135m", "hw=qnn_htp",
           f"validate.eval_tokens={args.eval_tokens}", f"store.root={store}", f"hydra.run.dir={tmp / 'run'}"]
    print("$ python", " ".join(cmd[1:]), flush=True)
    started = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    summary_file = tmp / "run" / "summary.json"
    if not summary_file.is_file():
        sys.exit(f"bench: the build wrote no summary (exit {p.returncode}):\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
    summary = json.loads(summary_file.read_text())
    print(f"{'stage':<10} {'status':<8} {'seconds':>8}")
    for stage in summary["stages"]:
        print(f"{stage['name']:<10} {stage['status']:<8} {stage['seconds']:>8.1f}")
    print(f"wall: {wall:.1f} s (exit {p.returncode})")
    if summary.get("package"):
        package = Path(summary["package"])
        qnn = json.loads((package / "qnn.json").read_text())
        for name, seconds in qnn["seconds"].items():
            size = (package / "qnn" / f"{name}_qnn.bin").stat().st_size
            print(f"context binary {name}: {seconds:.1f} s, {size / 2**20:.0f} MiB "
                  f"(QNN SDK {qnn['qnn_sdk_version']}, onnxruntime-qnn {qnn['onnxruntime_qnn_version']})")
    v = summary.get("validation") or {}
    gate = v.get("gate")
    if gate:
        print(f"gate ({v['target']}): {'passed' if gate['passed'] else 'FAILED'}, {gate['positions']} positions, "
              f"perplexity ratio {gate['ppl_ratio']:.4f} (bound {gate['bounds']['max_ppl_ratio']}), mean KL "
              f"{gate['mean_kl']:.2e}, top-1 agreement {gate['top1_agreement']:.3f}, greedy tokens matching "
              f"{gate['matching_prefix_tokens']}")
        qnn_tps, ref_tps = gate["package_tokens_per_second"], gate["reference_tokens_per_second"]
        print(f"teacher-forced tokens/s: QNN HTP simulator {qnn_tps:.1f}, PyTorch fp32 reference {ref_tps:.1f} "
              f"(baseline): x{qnn_tps / ref_tps:.3f}")
    if p.returncode != 0:
        print(p.stdout[-2000:] + p.stderr[-2000:])
        sys.exit(p.returncode)


if __name__ == "__main__":
    main()
