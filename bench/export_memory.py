"""Export memory and time for SmolLM2, both exporters: peak RSS over the process's RSS before the export, / fp32 weights.

Each (exporter, graph) runs in a fresh process (median of ``--repeats``): the checkpoint made by
the load stage (the packaged GGUF, dequantized, from a store built here), the static-KV
transform (``gqa``: the CPU program; ``scatter``: the AI 100 graph), then the export pass alone.
The peak is the kernel's high-water mark (VmHWM), reset just before the export. The bound
(issue 11): an increase of at most 2.0x the fp32 weights. A combination that fails says so.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = r"""
import json, sys, tempfile, time
from pathlib import Path

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

import torch
from transformers import AutoModelForCausalLM
from passes.export import ExportParams, export
from passes.transforms.static_kv import build_wrapper

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32, attn_implementation="eager")
weights = sum(p.numel() * p.element_size() for p in model.parameters())
attention = sys.argv[3]
wrapper = build_wrapper(model, attention=attention)
dynamo = sys.argv[2] == "dynamo"
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS
before = status("VmRSS:")
started = time.perf_counter()
with tempfile.TemporaryDirectory() as out:
    export({"model": wrapper}, ExportParams(attention=attention, dynamo=dynamo, opset=18 if dynamo else 17), Path(out))
    seconds = time.perf_counter() - started
peak = status("VmHWM:")
print("RESULT" + json.dumps({"weights": weights, "before": before, "peak": peak, "seconds": seconds}))
"""


def checkpoint(store: Path) -> Path:
    """The load stage's output for SmolLM2 (its package built once into ``store``, then cached)."""
    sys.path.insert(0, str(ROOT))
    from pipeline.api import build, compose

    result = build(compose(["model=smollm2_135m", f"store.root={store}"]), echo=lambda _l: None, goals=("package",))
    load = next(s for s in result.stages if s.name == "load")
    return store / "trees" / load.digest


def run(ckpt: Path, exporter: str, attention: str) -> dict | str:
    """The measurement, or why the export failed (its error's first line)."""
    p = subprocess.run([sys.executable, "-c", PROBE, str(ckpt), exporter, attention], cwd=ROOT, capture_output=True,
                       text=True, timeout=1800)
    if p.returncode != 0:
        errors = [line for line in p.stderr.splitlines() if line.startswith(("RuntimeError", "<class"))]
        return errors[-1][:160] if errors else f"exit {p.returncode}"
    return json.loads(p.stdout.split("RESULT", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store", type=Path, default=ROOT / "bench" / ".cache" / "export-memory-store")
    args = parser.parse_args()
    ckpt = checkpoint(args.store)
    print(f"SmolLM2-135M, the export pass alone, a fresh process each, medians of {args.repeats}")
    print(f"{'exporter':<13}{'graph':<9}{'weights MB':>11}{'RSS before MB':>15}{'peak MB':>10}"
          f"{'increase / weights':>20}{'export s':>10}")
    for exporter, attention in (("torchscript", "gqa"), ("torchscript", "scatter"), ("dynamo", "scatter"),
                                ("dynamo", "gqa")):
        rows = [run(ckpt, exporter, attention) for _ in range(args.repeats)]
        failed = [r for r in rows if isinstance(r, str)]
        if failed:
            print(f"{exporter:<13}{attention:<9} failed: {failed[0]}")
            continue
        ratio = statistics.median((r["peak"] - r["before"]) / r["weights"] for r in rows)
        print(f"{exporter:<13}{attention:<9}{rows[0]['weights'] / 1e6:11.0f}"
              f"{statistics.median(r['before'] for r in rows) / 1e6:15.0f}"
              f"{statistics.median(r['peak'] for r in rows) / 1e6:10.0f}{ratio:19.2f}x"
              f"{statistics.median(r['seconds'] for r in rows):10.1f}")
    print("bound (issue 11): an increase of at most 2.00x the fp32 weights")


if __name__ == "__main__":
    main()
