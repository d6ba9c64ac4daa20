"""The quantize stage: int8 / int4 MatMul weights (MatMulNBits, onnxruntime's quantizer) in CPU packages, gated teacher-forced."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_pipeline


def _levels(package: Path) -> set[int]:
    import onnx

    graph = onnx.load(str(package / "model.onnx"), load_external_data=False).graph
    return {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}


def _ops(package: Path) -> dict[str, int]:
    import onnx

    graph = onnx.load(str(package / "model.onnx"), load_external_data=False).graph
    ops: dict[str, int] = {}
    for node in graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return ops


@pytest.mark.parametrize("weights, bound", [("int8", 1.01), ("int4", 1.4)])
def test_a_quantized_package_validates_through_the_gate_and_rebuilds_only_from_quantize(store, weights, bound):
    r = run_pipeline(store, f"quantize.weights={weights}")
    assert r.rc == 0, r.out + r.err
    ran = {n for n, s in r.status().items() if s == "ran"}
    assert ran == {"quantize", "package", "validate"}, r.status()  # no export, no compile
    package = Path(r.summary["package"])
    ops = _ops(package)
    assert ops.get("MatMulNBits") == 11 and "MatMul" not in ops, ops  # 2 layers x (qkv, o, gate+up, down...) + lm_head
    assert _levels(package) == {4}  # int8 activations: the fast path
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["config"]["quantize"]["weights"] == weights
    v = r.summary["validation"]
    assert v["passed"] and v["target"] == "package" and "exact_target" in v and v["gate"]["passed"], v
    assert v["gate"]["bounds"]["max_ppl_ratio"] == bound and v["gate"]["numerics"]["matmul_weights"] == weights
    assert "validation: passed (target package: 2033 teacher-forced positions" in r.out
    # smaller, though tiny_llama's float embedding table (12.6 MB of its 25.5) stays as it is
    fp32 = sum(f.stat().st_size for f in (store / "trees" / r.stage("compile")["digest"]).glob("*.data"))
    assert sum(f.stat().st_size for f in package.glob("*.data")) < (0.65 if weights == "int8" else 0.6) * fp32


def test_excluded_weights_stay_float(store):
    r = run_pipeline(store, "quantize.weights=int4", "quantize.exclude=[*lm_head*]", "quantize.method=hqq",
                     "quantize.accuracy_level=1")
    assert r.rc == 0, r.out + r.err
    ops = _ops(Path(r.summary["package"]))
    assert ops.get("MatMulNBits") == 10 and ops.get("MatMul") == 1, ops
    assert _levels(Path(r.summary["package"])) == {1}


@pytest.mark.parametrize("overrides, message", [
    (["quantize.weights=int3"], "quantize.weights: 'int3' is not allowed; allowed: int8 | int4"),
    (["quantize.weights=int4", "quantize.block_size=20"], "quantize.block_size: 20 is not allowed"),
    (["quantize.weights=int8", "quantize.accuracy_level=7"], "quantize.accuracy_level: 7 is not allowed"),
    (["quantize.weights=int4", "hw=ai100_16c", "compile.dry_run=true"],
     "quantize.weights: 'int4' is not allowed for hw.target=ai100"),
    (["quantize.weights=int4", "hw.attention=scatter"], "quantize.weights: 'int4' is not allowed for this program"),
])
def test_bad_quantize_input_is_one_line(store, overrides, message):
    r = run_pipeline(store, *overrides)
    assert r.rc in (1, 2) and message in r.out + r.err, r.out + r.err
    assert "Traceback" not in r.out + r.err
