"""Graph rewrites and the ONNX file layout on small synthetic models (fast, no pipeline run)."""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.lib import onnx_files
from passes.rewrites import RewriteParams, check
from passes.rewrites.fp16_clip import FP16_MAX, clip_fp16
from passes.rewrites.rules import RULES

INF, NAN = np.float32(np.inf), np.float32(np.nan)
F16 = np.float32(FP16_MAX)


def _session(model: ir.Model) -> ort.InferenceSession:
    proto = ir.serde.serialize_model(model)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(model: ir.Model, **feeds: np.ndarray) -> list[np.ndarray]:
    return _session(model).run(None, feeds)


def _clip_model() -> ir.Model:
    """y = x + big + small + c;  z = x * c2 (+ value_float k);  big/c hold out-of-range, inf, NaN."""
    big = np.array([1e6, -1e6, INF, -INF, NAN, 1.5, 70000.0, -65504.0], dtype=np.float32)
    small = np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=np.float32)
    c = np.array([-3e38, 65504.0, 0, -INF, 0, 0, 0, 0], dtype=np.float32)
    c2 = np.array([0.5] * 8, dtype=np.float32)
    ints = np.array([10**9] * 8, dtype=np.int64)  # not fp32: never touched
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(c, "c")),
        helper.make_node("Constant", [], ["c2"], value=numpy_helper.from_array(c2, "c2")),
        helper.make_node("Constant", [], ["k"], value_float=1e9),
        helper.make_node("Add", ["x", "big"], ["t0"]),
        helper.make_node("Add", ["t0", "small"], ["t1"]),
        helper.make_node("Add", ["t1", "c"], ["y"]),
        helper.make_node("Mul", ["x", "c2"], ["t2"]),
        helper.make_node("Add", ["t2", "k"], ["z"]),
        helper.make_node("Cast", ["ints"], ["w"], to=TensorProto.INT64),
    ]
    vec = [8]
    graph = helper.make_graph(
        nodes, "clip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, vec)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, vec) for n in ("y", "z")]
        + [helper.make_tensor_value_info("w", TensorProto.INT64, vec)],
        initializer=[numpy_helper.from_array(big, "big"), numpy_helper.from_array(small, "small"),
                     numpy_helper.from_array(ints, "ints")])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def _clip_expected(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    big = np.array([F16, -F16, INF, -INF, NAN, 1.5, F16, -F16], dtype=np.float32)
    small = np.arange(1, 9, dtype=np.float32)
    c = np.array([-F16, F16, 0, -INF, 0, 0, 0, 0], dtype=np.float32)
    return x + big + small + c, x * np.float32(0.5) + F16


def _const_attr(model: ir.Model, output: str) -> ir.Attr:
    node = next(n for n in model.graph if n.outputs[0].name == output)
    return next(iter(node.attributes.values()))


def test_fp16_clip_clips_constants_and_initializers_keeps_inf_nan():
    from onnxscript import optimizer

    model = _clip_model()
    optimizer.basic_constant_propagation(model.graph)  # Constant outputs know their values
    inits = model.graph.initializers
    small, ints, c2 = inits["small"].const_value, inits["ints"].const_value, _const_attr(model, "c2").value

    assert clip_fp16(model) == 3  # big, c, k
    np.testing.assert_array_equal(
        inits["big"].const_value.numpy(), np.array([F16, -F16, INF, -INF, NAN, 1.5, F16, -F16], dtype=np.float32))
    np.testing.assert_array_equal(_const_attr(model, "c").value.numpy(),
                                  np.array([-F16, F16, 0, -INF, 0, 0, 0, 0], dtype=np.float32))
    assert _const_attr(model, "k").value == FP16_MAX
    known = {n.outputs[0].name: n.outputs[0].const_value for n in model.graph if n.op_type == "Constant"}
    assert known["c"] is _const_attr(model, "c").value and known["k"].numpy() == F16
    # In range (or not fp32): the very same objects, no copy.
    assert inits["small"].const_value is small and inits["ints"].const_value is ints
    assert _const_attr(model, "c2").value is c2

    x = np.linspace(-2, 2, 8, dtype=np.float32)
    y, z, _ = _run(model, x=x)
    want_y, want_z = _clip_expected(x)
    np.testing.assert_array_equal(y, want_y)  # NaN and +-inf where expected
    np.testing.assert_array_equal(z, want_z)
    assert clip_fp16(model) == 0  # idempotent


def test_fp16_clip_inside_model_local_function():
    fn_nodes = [
        helper.make_node("Constant", [], ["big"], value=numpy_helper.from_array(
            np.array([1e5, -INF, 2.0], dtype=np.float32), "big")),
        helper.make_node("Constant", [], ["ok"], value=numpy_helper.from_array(
            np.array([1.0, 2.0, 3.0], dtype=np.float32), "ok")),
        helper.make_node("Add", ["a", "big"], ["s"]),
        helper.make_node("Mul", ["s", "ok"], ["out"]),
    ]
    fn = helper.make_function("custom.dom", "AddBig", ["a"], ["out"], fn_nodes,
                              [helper.make_opsetid("", 18)])
    graph = helper.make_graph([helper.make_node("AddBig", ["x"], ["y"], domain="custom.dom")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    proto = helper.make_model(graph, functions=[fn], opset_imports=[helper.make_opsetid("", 18),
                                                                    helper.make_opsetid("custom.dom", 1)])
    model = ir.serde.deserialize_model(proto)
    function = next(iter(model.functions.values()))
    ok = next(n for n in function if n.outputs[0].name == "ok").attributes["value"].value

    assert clip_fp16(model) == 1
    big = next(n for n in function if n.outputs[0].name == "big").attributes["value"].value
    np.testing.assert_array_equal(big.numpy(), np.array([F16, -INF, 2.0], dtype=np.float32))
    assert next(n for n in function if n.outputs[0].name == "ok").attributes["value"].value is ok
    (y,) = _run(model, x=np.ones(3, dtype=np.float32))
    np.testing.assert_array_equal(y, (np.ones(3, dtype=np.float32) + [F16, -INF, 2.0]) * [1, 2, 3])


def test_fp16_clip_on_memory_mapped_store_tree(tmp_path):
    """load_ir gives read-only memmaps: clipped tensors are new objects, the files stay as written."""
    big = np.full(1000, 1e6, dtype=np.float32)  # > INLINE_LIMIT: external, memory-mapped
    big[0] = -INF
    fine = np.full(1000, 3.0, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "big"], ["t"]), helper.make_node("Add", ["t", "fine"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1000])],
        initializer=[numpy_helper.from_array(big, "big"), numpy_helper.from_array(fine, "fine")])
    onnx_files.save_ir(ir.serde.deserialize_model(helper.make_model(graph)), tmp_path)
    data = (tmp_path / onnx_files.WEIGHTS).read_bytes()

    model = onnx_files.load_ir(tmp_path)
    fine_tensor = model.graph.initializers["fine"].const_value
    assert isinstance(fine_tensor.raw, np.memmap)
    assert RULES["fp16_clip"].apply(model) is model
    assert model.graph.initializers["fine"].const_value is fine_tensor
    clipped = model.graph.initializers["big"].const_value.numpy()
    assert not isinstance(clipped, np.memmap) and clipped[0] == -INF and (clipped[1:] == F16).all()
    assert (tmp_path / onnx_files.WEIGHTS).read_bytes() == data


def test_fp16_clip_is_a_registered_rule():
    assert "fp16_clip" in RULES
    check(RewriteParams(rules=("optimize", "fp16_clip")))  # no UserError


# --- external data split -------------------------------------------------------------------------

N = 3000  # floats per small weight: 12000 bytes, so two per 30000-byte file with 4 KiB alignment
LIMIT = 30000


def _weights_model() -> ir.Model:
    """y = x + w0 + ... + w4 + big; big (14 x N floats, 168000 bytes) is larger than LIMIT."""
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(N).astype(np.float32) for _ in range(5)]
    big = rng.standard_normal((14, N)).astype(np.float32)
    names = [f"w{i}" for i in range(5)]
    nodes, last = [], "x"
    for i, name in enumerate(names[:3] + ["big"] + names[3:]):
        nodes.append(helper.make_node("Add", [last, name], [f"t{i}" if i < 5 else "y"]))
        last = f"t{i}"
    graph = helper.make_graph(
        nodes, "weights", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [14, N])],
        initializer=[numpy_helper.from_array(w, n) for w, n in zip(weights, names)][:3]
        + [numpy_helper.from_array(big, "big")]
        + [numpy_helper.from_array(w, n) for w, n in zip(weights, names)][3:]
        + [numpy_helper.from_array(np.ones(4, dtype=np.float32), "tiny")])  # inline, unused
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def _run_saved(folder) -> np.ndarray:
    session = ort.InferenceSession(str(folder / onnx_files.MODEL), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.linspace(-1, 1, N, dtype=np.float32)})[0]


def test_save_split_files_within_limit_and_same_outputs(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    whole.mkdir(), split.mkdir()
    onnx_files.save_ir(_weights_model(), whole)
    onnx_files.save_ir(_weights_model(), split, max_file_bytes=LIMIT)

    files = onnx_files.data_files(split)
    assert sorted(files) == sorted(p.name for p in split.iterdir() if p.name != onnx_files.MODEL)
    # w0 w1 | w2 | big (alone, oversized) | w3 w4
    assert files == [f"model-0000{i}-of-00004.onnx.data" for i in range(1, 5)]
    proto = onnx.load(split / onnx_files.MODEL, load_external_data=False)
    where = {t.name: {e.key: e.value for e in t.external_data} for t in proto.graph.initializer if t.external_data}
    assert sorted(where) == ["big", "w0", "w1", "w2", "w3", "w4"]
    for name, info in where.items():
        assert int(info.get("offset", 0)) % onnx_files.ALIGNMENT == 0
        size = (split / info["location"]).stat().st_size
        alone = [n for n, i in where.items() if i["location"] == info["location"]] == [name]
        assert size <= LIMIT or (alone and int(info["length"]) > LIMIT), (name, size)
    assert where["big"]["location"] == files[2] and (split / files[2]).stat().st_size == 14 * N * 4

    np.testing.assert_array_equal(_run_saved(split), _run_saved(whole))
    onnx.checker.check_model(str(split / onnx_files.MODEL))  # fresh files, one link each
    loaded = onnx_files.load_ir(split)  # memory-maps from each tensor's own file
    np.testing.assert_array_equal(loaded.graph.initializers["w4"].const_value.numpy(),
                                  _weights_model().graph.initializers["w4"].const_value.numpy())


def test_save_unsplit_is_one_file_and_a_large_limit_changes_nothing(tmp_path):
    plain, roomy = tmp_path / "plain", tmp_path / "roomy"
    plain.mkdir(), roomy.mkdir()
    onnx_files.save_ir(_weights_model(), plain)
    onnx_files.save_ir(_weights_model(), roomy, max_file_bytes=1 << 30)

    assert sorted(os.listdir(plain)) == [onnx_files.MODEL, onnx_files.WEIGHTS]
    assert onnx_files.data_files(plain) == [onnx_files.WEIGHTS]
    for name in (onnx_files.MODEL, onnx_files.WEIGHTS):
        assert (plain / name).read_bytes() == (roomy / name).read_bytes()
    onnx.checker.check_model(str(plain / onnx_files.MODEL))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_save_rejects_bad_limit(tmp_path, bad):
    with pytest.raises(ValueError):
        onnx_files.save_ir(_weights_model(), tmp_path, max_file_bytes=bad)
