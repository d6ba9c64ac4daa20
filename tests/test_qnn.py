"""The qnn target on the real onnxruntime-qnn (HTP simulated on x86): its rules, the refused-node error, a build through the gate.

Each rule is shown on a small graph: what it rewrites, the same numbers as before on ONNX
Runtime's CPU, and (for the RMSNorm rules) that the graph QNN could not finalize now finalizes.
The build is tiny_llama on hw=qnn_htp: prefill and decode context binaries, validated on the
QNN EP with CPU fallback disabled through the teacher-forced gate, then run by pipeline.infer.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import copy_store, infer, run_pipeline
from passes.rewrites import rms_norm
from passes.targets.qnn import rules
from runtime import qnn_ep

HTP = {"backend_type": "htp", "htp_arch": "73", "soc_model": "57", "enable_htp_fp16_precision": "1"}
HIDDEN = 64
WEIGHT = np.linspace(0.5, 1.5, HIDDEN).astype(np.float32)


def _model(nodes, inputs, outputs, inits=(), opset=18) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 9
    return ir.serde.deserialize_model(proto)


def _rms_norm_graph() -> ir.Model:
    """y = w * (x / sqrt(mean(x^2) + eps)), written as exporters write it (Pow(x, 2) at its head)."""
    inits = [numpy_helper.from_array(WEIGHT, "w"), numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps"), numpy_helper.from_array(np.array([-1]), "axes")]
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"]), helper.make_node("ReduceMean", ["sq", "axes"], ["var"], keepdims=1),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["rt"]),
             helper.make_node("Reciprocal", ["rt"], ["inv"]), helper.make_node("Mul", ["x", "inv"], ["n"]),
             helper.make_node("Mul", ["w", "n"], ["y"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, HIDDEN]) for n in ("x", "y")]
    return _model(nodes, io[:1], io[1:], inits)


def _save(model: ir.Model, path) -> str:
    ir.save(model, path)
    return str(path)


def _cpu(model: ir.Model, **feeds) -> np.ndarray:
    proto = ir.serde.serialize_model(model).SerializeToString()
    return ort.InferenceSession(proto, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _x(scale: float) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal((1, 4, HIDDEN)) * scale).astype(np.float32)


def _expected(x: np.ndarray) -> np.ndarray:
    return WEIGHT * x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6)


def test_the_decomposed_rms_norm_does_not_finalize_on_htp(tmp_path):
    with pytest.raises(Exception, match="QNN_COMMON_ERROR_MEM_ALLOC"):
        qnn_ep.open_session(_save(_rms_norm_graph(), tmp_path / "rms.onnx"), HTP)


@pytest.mark.parametrize("custom_op_first", [False, True])
def test_native_rms_norm_makes_one_node_that_htp_runs_without_overflow(tmp_path, custom_op_first):
    before = _rms_norm_graph()
    if custom_op_first:  # the AI 100 graph: CustomRMSNorm, a model-local function
        before = rms_norm.apply(before)
        assert [n.op_type for n in before.graph] == ["CustomRMSNorm"]
    x = _x(3.0)
    want = _cpu(before, x=x)
    after = rules.native_rms_norm(before)
    assert [(n.op_type, n.domain) for n in after.graph] == [("SimplifiedLayerNormalization", "")]
    assert not after.functions and rules.CUSTOM_DOMAIN not in after.opset_imports
    np.testing.assert_allclose(_cpu(after, x=x), want, rtol=1e-5, atol=1e-5)
    # On HTP in fp16, with |x| ~ 400 (x^2 past fp16's 65504): still the fp32 result within fp16 rounding.
    hot = _x(400.0)
    y = qnn_ep.open_session(_save(after, tmp_path / "native.onnx"), HTP).run(None, {"x": hot})[0]
    assert np.abs(y - _expected(hot)).max() < 0.02


def test_square_as_mul_finalizes_but_overflows_where_native_rms_norm_does_not(tmp_path):
    after = rules.square_as_mul(_rms_norm_graph())
    assert [n.op_type for n in after.graph][0] == "Mul" and "Pow" not in [n.op_type for n in after.graph]
    x = _x(3.0)
    np.testing.assert_allclose(_cpu(after, x=x), _cpu(_rms_norm_graph(), x=x), rtol=1e-6, atol=1e-6)
    session = qnn_ep.open_session(_save(after, tmp_path / "mul.onnx"), HTP)
    assert np.abs(session.run(None, {"x": x})[0] - _expected(x)).max() < 0.02
    hot = _x(400.0)  # the squared sum leaves fp16's range: why native_rms_norm runs first
    assert np.abs(session.run(None, {"x": hot})[0] - _expected(hot)).max() > 0.5


def test_square_as_mul_leaves_other_powers():
    inits = [numpy_helper.from_array(np.array(3.0, np.float32), "three")]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("x", "y")]
    model = rules.square_as_mul(_model([helper.make_node("Pow", ["x", "three"], ["y"])], io[:1], io[1:], inits))
    assert [n.op_type for n in model.graph] == ["Pow"]


def _dynamic_graph() -> ir.Model:
    """y = Reshape(x, [Shape(x)[0] * Shape(x)[1], -1]) + 1: shape arithmetic on symbolic dims."""
    inits = [numpy_helper.from_array(np.array([0]), "i0"), numpy_helper.from_array(np.array([1]), "i1"),
             numpy_helper.from_array(np.array([-1]), "m1"), numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i0"], ["a"]),
             helper.make_node("Gather", ["s", "i1"], ["b"]), helper.make_node("Mul", ["a", "b"], ["ab"]),
             helper.make_node("Concat", ["ab", "m1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Add", ["r", "one"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", "seq_len", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 8])
    return _model(nodes, [x], [y], inits)


def test_static_shapes_fixes_every_dimension_and_folds_the_shape_arithmetic():
    x = np.arange(2 * 3 * 8, dtype=np.float32).reshape(2, 3, 8)
    want = _cpu(_dynamic_graph(), x=x)
    model = rules.static_shapes(_dynamic_graph(), {"batch_size": 2, "seq_len": 3, "rows": 6})
    assert [list(v.shape) for v in (*model.graph.inputs, *model.graph.outputs)] == [[2, 3, 8], [6, 8]]
    assert [n.op_type for n in model.graph] == ["Reshape", "Add"]  # Shape, Gather, Mul, Concat folded
    np.testing.assert_array_equal(_cpu(model, x=x), want)


def test_static_shapes_names_a_dimension_the_specialization_lacks():
    with pytest.raises(ValueError, match="dimension 'rows' of y is not a symbol of the specialization; "
                                         "allowed: batch_size, seq_len"):
        rules.static_shapes(_dynamic_graph(), {"batch_size": 2, "seq_len": 3})


def test_a_node_qnn_cannot_take_is_an_error_naming_it(tmp_path):
    io = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4]), helper.make_tensor_value_info("y", TensorProto.FLOAT, [])]
    nodes = [helper.make_node("Add", ["x", "x"], ["d"], name="double"), helper.make_node("Det", ["d"], ["y"], name="the_det")]
    path = _save(_model(nodes, io[:1], io[1:]), tmp_path / "det.onnx")
    with pytest.raises(qnn_ep.QnnRefused, match=r"QNN cannot take 1 node\(s\) of det.onnx \(CPU fallback is "
                                                r"disabled\): the_det \(Det\)$") as e:
        qnn_ep.open_session(path, HTP)
    assert e.value.nodes == [("the_det", "Det")]


# ---------------------------------------------------------------- tiny_llama through the pipeline
@pytest.fixture(scope="module")
def qnn_build(tmp_path_factory, built_store):
    store = copy_store(built_store, tmp_path_factory.mktemp("qnn") / "store")
    r = run_pipeline(store, "hw=qnn_htp", "validate.eval_tokens=256")
    assert r.rc == 0, r.out + r.err
    return store, r


def test_tiny_llama_builds_on_htp_and_passes_the_gate_on_the_qnn_ep(qnn_build):
    from runtime import package_format as fmt
    from runtime.sessions import open_session

    store, r = qnn_build
    assert r.status()["compile"] == "ran" and "qnn: Prefill: context binary in" in r.out
    v = r.summary["validation"]
    assert (v["passed"], v["exact_target"], v["target"]) == (True, "onnx", "qnn-htp")
    gate = v["gate"]
    assert gate["passed"] and gate["numerics"]["activations"] == "float16" and gate["bounds"]["max_ppl_ratio"] == 1.001
    assert gate["ppl_ratio"] <= 1.001 and gate["nonfinite_positions"] == 0
    package = Path(r.summary["package"])
    program = fmt.read_program(package)
    assert (program.target, program.binary) == ("qnn", "qnn")
    qnn = json.loads((package / "qnn.json").read_text())
    assert qnn["qnn_sdk_version"] == qnn_ep.versions()["qnn_sdk"] and set(qnn["seconds"]) == {"Prefill", "Decode"}
    session = open_session(package)
    assert type(session).__name__ == "QnnSession"
    for spec in session.program.specializations:  # every graph one EPContext node, on QNN alone
        s = session.sessions[spec.name]
        assert s.get_providers()[0] == qnn_ep.EP
        assert s.get_session_options().get_session_config_entry(qnn_ep.NO_FALLBACK) == "1"


def test_infer_runs_the_qnn_package_and_a_bad_htp_arch_is_one_line(qnn_build):
    store, _ = qnn_build
    run = infer(store, "hw=qnn_htp", "validate.eval_tokens=256", "prompt=The capital of France is", "generation_len=16")
    assert run.rc == 0, run.out + run.err
    assert [s["status"] for s in run.summary["stages"]] == ["cached"] * len(run.summary["stages"])
    assert run.exec_info["generated_ids"][0] == run_reference_tokens(store)[:16]
    bad = run_pipeline(store, "hw=qnn_htp", "hw.htp_arch=70")
    assert bad.rc == 2 and bad.err.strip().splitlines()[-1] == \
        "error: hw.htp_arch: 70 is not allowed; allowed: 68 | 69 | 73 | 75 | 79 | 81"


def run_reference_tokens(store) -> list[int]:
    """The reference stage's greedy tokens for validate.prompt (PyTorch fp32)."""
    key = (store / "index" / "model" / "tiny_llama" / "reference").read_text()
    record = json.loads((store / "ac" / f"{key}.json").read_text())
    return json.loads((store / "trees" / record["digest"] / "reference.json").read_text())["tokens"]
