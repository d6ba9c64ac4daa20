"""The README's table of decoder families: tests/model_families.py's checks on every family, as Markdown.

Each family's tiny random config through the static-KV transform, the export and ONNX Runtime,
against HF's own greedy tokens (32 new) and logits (within 1e-3): the CPU program with a batch
of two prompts of different lengths, and the AI 100 graph with continuous batching (2 slots, 3
prompts) and speculative decoding (K=3) at once. The same checks as tests/test_model_coverage.py.
Exported by the TorchScript exporter (the default), or by the dynamo one (export.dynamo=true)
for the families only it takes (model_families.DYNAMO_ONLY).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from model_families import FAMILIES, VARIANTS, check, tiny_model  # noqa: E402


def cell(outcome) -> str:
    if not outcome.passed:
        return "no"
    how = [outcome.attention] * (outcome.variant == "cpu") + ["dynamo exporter"] * (outcome.exporter == "dynamo")
    return "tokens equal" + (f" ({', '.join(how)})" if how else "")


def short(reason: str) -> str:
    """The reason's first clause, without the exception's class (for a table cell)."""
    text = reason.split(": ", 1)[1] if reason.split(": ", 1)[0].endswith(("Error", "Exception")) else reason
    text = text.split("; allowed")[0]
    return (text[:117] + "…") if len(text) > 118 else text


def main() -> None:
    started = time.perf_counter()
    rows, passed = [], 0
    for family in FAMILIES:
        outcomes = {v: check(family, v) for v in VARIANTS}
        ok = all(o.passed for o in outcomes.values())
        passed += ok
        diffs = [o.max_abs_logit_diff for o in outcomes.values() if o.max_abs_logit_diff is not None]
        notes = "; ".join(sorted({short(o.reason) for o in outcomes.values() if o.reason}))
        rows.append(f"| `{family}` | {type(tiny_model(family)).__name__} | {cell(outcomes['cpu'])} | "
                    f"{cell(outcomes['ai100'])} | {f'{max(diffs):.1e}' if diffs else ''} | {notes} |")
    print("| model_type | HF class | CPU program, batch of 2 (attention) | AI 100 graph, CB + speculative | "
          "max \\|logit diff\\| | notes |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print(f"\n{passed} of {len(FAMILIES)} families token-exact in both programs ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
