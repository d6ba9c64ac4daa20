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


@pytest.mark.parametrize("weights, bound", [("int8", 1.01), ("int4", 1.45)])
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


def _tied_model(vocab: int = 96, hidden: int = 80):
    """An onnx_ir graph gathering rows of a table and a head MatMul by its transpose (the exporter's tied form)."""
    import numpy as np
    import onnx
    import onnx_ir as ir
    from onnx import TensorProto, helper as h, numpy_helper as nh

    table = np.random.default_rng(0).standard_normal((vocab, hidden)).astype(np.float32)
    graph = h.make_graph(
        [h.make_node("Gather", ["table", "ids"], ["rows"], name="embed"),
         h.make_node("MatMul", ["x", "table.T"], ["logits"], name="lm_head")], "tied",
        [h.make_tensor_value_info("ids", TensorProto.INT64, ["n"]), h.make_tensor_value_info("x", TensorProto.FLOAT, ["r", hidden])],
        [h.make_tensor_value_info("rows", TensorProto.FLOAT, None), h.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [nh.from_array(table, "table"), nh.from_array(table.T.copy(), "table.T")])
    return ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])), table


def _run(model, **feeds):
    import onnx_ir as ir
    import onnxruntime as ort

    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("weights, method, symmetric, gather", [
    ("int4", "rtn", True, "GatherBlockQuantized"), ("int4", "rtn", False, "GatherBlockQuantized"),
    ("int8", "rtn", True, "GatherBlockQuantized"), ("int8", "rtn", False, "GatherBlockQuantized"),
    ("int4", "hqq", True, "BitShift")])
def test_a_tied_table_is_stored_once_in_every_precision(weights, method, symmetric, gather):
    import numpy as np

    from passes.quantize import QuantizeParams, _quantize
    from passes.targets.ort.tied import tie_head

    model, table = _tied_model()
    ids, eye = np.array([0, 7, 95]), np.eye(80, dtype=np.float32)
    assert tie_head(model) == 1 and list(model.graph.initializers) == ["table"]
    rows, logits = _run(model, ids=ids, x=eye)
    assert np.array_equal(rows, table[ids]) and np.allclose(logits, table.T, atol=1e-6)

    params = QuantizeParams(weights=weights, block_size=32, method=method, symmetric=symmetric, exclude=(),
                            accuracy_level=4, target="cpu")
    quantized, counts = _quantize(model, params)
    ops = [n.op_type for n in quantized.graph]
    assert counts["tables_shared"] == 1 and "MatMulNBits" in ops and gather in ops and "Gather" not in ops[:1], ops
    assert all(v.const_value.shape != (96, 80) and v.const_value.shape != (80, 96) for v in quantized.graph.initializers.values())
    rows, head = _run(quantized, ids=ids, x=eye)  # x = I: the head's dequantized weights, column per token
    # the embedding reads the head's blocks (the head computes in int8 activations: equal to float rounding)
    assert rows.shape == (3, 80) and np.allclose(rows, head.T[ids], rtol=1e-5, atol=1e-6)
    assert np.abs(rows - table[ids]).max() < (0.05 if weights == "int8" else 0.8)  # and they are the table, quantized


def test_a_tied_head_left_float_stays_tied():
    from passes.quantize import QuantizeParams, _quantize
    from passes.targets.ort.tied import tie_head

    model, _ = _tied_model()
    tie_head(model)
    params = QuantizeParams(weights="int4", block_size=32, method="rtn", symmetric=True, exclude=("lm_head",),
                            accuracy_level=4, target="cpu")
    quantized, counts = _quantize(model, params)
    assert [n.op_type for n in quantized.graph] == ["Gather", "FusedMatMul"] and counts["tables_shared"] == 0
    assert list(quantized.graph.initializers) == ["table"]


def test_a_tied_model_builds_once_stored_and_validates(store):
    fp32 = run_pipeline(store, "model.hf_config.tie_word_embeddings=true")
    assert fp32.rc == 0, fp32.out + fp32.err
    assert _ops(Path(fp32.summary["package"])).get("FusedMatMul") == 1
    untied = sum(f.stat().st_size for f in Path(run_pipeline(store).summary["package"]).glob("*.data"))
    tied = sum(f.stat().st_size for f in Path(fp32.summary["package"]).glob("*.data"))
    assert untied - tied >= 49152 * 64 * 4 - 4096, (untied, tied)  # the 12.6 MB transpose is gone
    r = run_pipeline(store, "model.hf_config.tie_word_embeddings=true", "quantize.weights=int4")
    assert r.rc == 0 and r.summary["validation"]["gate"]["passed"], r.out + r.err
    assert _ops(Path(r.summary["package"])).get("GatherBlockQuantized") == 1
    assert sum(f.stat().st_size for f in Path(r.summary["package"]).glob("*.data")) < 0.2 * tied


def test_the_scatter_program_quantizes_every_graph_over_one_weights_file(store):
    import onnx

    r = run_pipeline(store, "quantize.weights=int8", "hw.attention=scatter")
    assert r.rc == 0 and r.summary["validation"]["gate"]["passed"], r.out + r.err
    package = Path(r.summary["package"])
    graphs = sorted(p.name for p in package.glob("*.onnx"))
    assert graphs == ["decode.onnx", "prefill.onnx"] and [p.name for p in package.glob("*.data")] == ["model.onnx.data"]
    for name in graphs:
        graph = onnx.load(str(package / name), load_external_data=False).graph
        assert sum(n.op_type == "MatMulNBits" for n in graph.node) == 15, name  # q, k, v apart here
        assert graph.input[0].type.tensor_type.shape.dim[1].dim_value == (1 if name == "decode.onnx" else 128)


def test_an_embedding_package_quantizes_and_passes_its_gate(store):
    import onnx

    r = run_pipeline(store, "pipeline=embedding", "quantize.weights=int8", model="minilm_l6")
    assert r.rc == 0, r.out + r.err
    v = r.summary["validation"]
    assert v["passed"] and v["min_cosine_allowed"] == 0.998 and 0.998 <= v["min_cosine"] < 0.9999, v
    graph = onnx.load(str(Path(r.summary["package"]) / "model.onnx"), load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 36 and all(len(n.input) == 6 and n.input[5] for n in nbits)  # 6 layers x 6, bias inside
    assert not any(n.op_type == "Gemm" for n in graph.node)


@pytest.mark.parametrize("overrides, message", [
    (["quantize.weights=int3"], "quantize.weights: 'int3' is not allowed; allowed: int8 | int4"),
    (["quantize.weights=int4", "quantize.block_size=20"], "quantize.block_size: 20 is not allowed"),
    (["quantize.weights=int8", "quantize.accuracy_level=7"], "quantize.accuracy_level: 7 is not allowed"),
    (["quantize.weights=int8", "quantize.method=hqq"], "quantize.method: 'hqq' is not allowed with quantize.weights=int8"),
    (["quantize.weights=int4", "hw=ai100_16c", "compile.dry_run=true"],
     "quantize.weights: 'int4' is not allowed for hw.target=ai100"),
])
def test_bad_quantize_input_is_one_line(store, overrides, message):
    r = run_pipeline(store, *overrides)
    assert r.rc in (1, 2) and message in r.out + r.err, r.out + r.err
    assert "Traceback" not in r.out + r.err


def test_a_compressed_package_generates_publishes_and_runs_after_fetch(store, tmp_path):
    import subprocess

    from conftest import infer

    r = infer(store, "quantize.weights=int4", "prompt=Hello", "generation_len=4")
    assert r.rc == 0 and len(r.exec_info["generated_ids"][0]) == 4, r.out + r.err
    published = run_pipeline(store, "quantize.weights=int4", f"to={tmp_path / 'dest'}", entry="pipeline.publish")
    assert published.rc == 0, published.out + published.err
    assert published.status()["quantize"] == "cached"  # the package infer built
    name = published.summary["published"][0]["name"]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)

    fetched = cli("pipeline.fetch", f"{tmp_path / 'dest'}/{name}", str(tmp_path / "got"))
    assert fetched.returncode == 0, fetched.stderr
    run = cli("runtime", str(tmp_path / "got"), "--prompt", "Hello", "--max-new-tokens", "4")
    assert run.returncode == 0, run.stderr
