"""The numerics twin: graph rewrites (onnx_ir) that make an fp32 ONNX compute as a lossy target stores values.

A twin keeps the graph's signature (fp32 in and out, so every runtime path runs it as it is)
and changes only what values can be:

- ``fp16 activations``: every float value a top-level node produces, and every float graph
  input, passes through Cast(fp16) -> Cast(fp32): stored in fp16 (overflow becomes inf, as
  on the device), while an operator's own arithmetic stays fp32 (devices accumulate wider).
  Float initializers are rounded to fp16 once. Node outputs named in ``fp32_nodes`` keep fp32.
- ``MXFP6 weights``: each float initializer feeding a MatMul's (or Gemm's) weight input is
  rounded to MXFP6 (passes.numerics.mx) in blocks along its reduction axis.
- ``MXINT8 KV``: each KV cache input (role past_kv) is read through MXINT8 rounding in blocks
  along the head dimension: the cache the device keeps between steps holds MXINT8, while a
  step's own new rows stay fp16 within the step.

A model-local function (a custom op such as CustomRMSNorm) counts as one operator: only its
outputs are rounded.
"""
from __future__ import annotations

from typing import Any, Iterable

from pipeline.pass_api import FLOAT16, MXFP6, MXINT8, Numerics


def make_twin(model: Any, numerics: Numerics, kv_inputs: Iterable[str]) -> dict[str, int]:
    """Rewrite ``model`` (onnx_ir, in place) into its twin; returns counts of what changed."""
    counts = {"mxfp6_weights": 0, "fp16_initializers": 0, "rounded_values": 0, "mxint8_kv_inputs": 0}
    if numerics.matmul_weights == MXFP6:
        counts["mxfp6_weights"] = _mx_weights(model)
    if numerics.activations == FLOAT16:
        counts["fp16_initializers"] = _fp16_initializers(model)
        counts["rounded_values"] = _round_values(model, set(numerics.fp32_nodes))
    if numerics.kv_cache == MXINT8:
        counts["mxint8_kv_inputs"] = _mxint8_inputs(model, set(kv_inputs))
    return counts


def float_node_outputs(model: Any) -> list[str]:
    """Names of the float values top-level nodes produce (the candidates for ``fp32_nodes``)."""
    import onnx_ir as ir

    return [v.name for node in model.graph for v in node.outputs
            if v.name and v.type is not None and v.dtype == ir.DataType.FLOAT]


# ---------------------------------------------------------------- weights
def _weight_axis(node: Any, index: int) -> int | None:
    """The reduction axis of a MatMul/Gemm weight input, or None if ``index`` is not the weight."""
    if node.domain not in ("", "ai.onnx") or index != 1:
        return None
    if node.op_type == "MatMul":
        return -2
    if node.op_type == "Gemm":
        trans = node.attributes.get("transB")
        return 1 if trans is not None and trans.value else 0
    return None


def _mx_weights(model: Any) -> int:
    import numpy as np
    import onnx_ir as ir

    from passes.numerics.mx import mxfp6

    done: set[str] = set()
    for node in model.graph:
        for index, value in enumerate(node.inputs):
            axis = _weight_axis(node, index)
            if axis is None or value is None or not value.is_initializer() or value.name in done:
                continue
            tensor = value.const_value
            if tensor is None or tensor.dtype != ir.DataType.FLOAT or len(tensor.shape) < 2:
                continue
            rounded = mxfp6(np.asarray(tensor.numpy()), axis=axis)
            value.const_value = ir.Tensor(rounded, dtype=ir.DataType.FLOAT, name=tensor.name)
            done.add(value.name)
    return len(done)


def _fp16_initializers(model: Any) -> int:
    import numpy as np
    import onnx_ir as ir

    changed = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None or tensor.dtype != ir.DataType.FLOAT:
            continue
        array = np.asarray(tensor.numpy())
        with np.errstate(over="ignore"):  # past 65504 is inf in fp16, as on the device (fp16_clip exists for that)
            rounded = array.astype(np.float16).astype(np.float32)
        if not np.array_equal(rounded, array, equal_nan=True):
            value.const_value = ir.Tensor(rounded, dtype=ir.DataType.FLOAT, name=tensor.name)
            changed += 1
    return changed


# ---------------------------------------------------------------- activations and the KV cache
def _round_values(model: Any, keep_fp32: set[str]) -> int:
    """Cast(fp16) -> Cast(fp32) after every float node output and float graph input not kept fp32."""
    import onnx_ir as ir

    graph = model.graph
    values = [v for v in graph.inputs if v.dtype == ir.DataType.FLOAT]
    values += [v for node in list(graph) for v in node.outputs
               if v.type is not None and v.dtype == ir.DataType.FLOAT and v.name not in keep_fp32]
    for value in values:
        _insert_after(graph, value, _cast_pair)
    return len(values)


def _mxint8_inputs(model: Any, names: set[str]) -> int:
    graph = model.graph
    values = [v for v in graph.inputs if v.name in names]
    opset = model.opset_imports.get("", 17)
    for value in values:
        _insert_after(graph, value, lambda v: _mxint8_nodes(v, opset))
    return len(values)


def _insert_after(graph: Any, value: Any, build: Any) -> None:
    """Route every use of ``value`` (and the graph output it may be) through the nodes ``build`` makes."""
    import onnx_ir as ir

    users = list(value.uses())
    is_output = value in graph.outputs
    if not users and not is_output:
        return
    nodes, result = build(value)
    producer = value.producer()
    if producer is None:
        for node in reversed(nodes):
            graph.insert_before(graph.node(0), node) if len(graph) else graph.append(node)
    else:
        graph.insert_after(producer, nodes)
    for use in users:
        use.node.replace_input_with(use.idx, result)
    if is_output:  # the graph output keeps its name: the signature is by name
        name = value.name
        value.name, result.name = f"{name}__unrounded", name
        graph.outputs[list(graph.outputs).index(value)] = result
    result.type, result.shape = ir.TensorType(ir.DataType.FLOAT), value.shape


def _cast_pair(value: Any) -> tuple[list[Any], Any]:
    import onnx_ir as ir

    half = ir.node("Cast", [value], {"to": ir.DataType.FLOAT16}, name=f"{value.name}__to_fp16",
                   outputs=[ir.Value(name=f"{value.name}__fp16")])
    back = ir.node("Cast", [half.outputs[0]], {"to": ir.DataType.FLOAT}, name=f"{value.name}__from_fp16",
                   outputs=[ir.Value(name=f"{value.name}__fp16_fp32")])
    return [half, back], back.outputs[0]


def _mxint8_nodes(value: Any, opset: int) -> tuple[list[Any], Any]:
    """MXINT8 quantize-dequantize in ONNX, blocks of 32 along the last axis (padded with zeros).

    scale = 2^floor(log2(max|block|)) (the exponent from Log is corrected by one where it
    lands off by rounding), element = clip(round(v / scale * 64), -127, 127) / 64 * scale.
    """
    import numpy as np
    import onnx_ir as ir

    from passes.numerics.mx import BLOCK, INT8_FRACTION, INT8_MAX

    nodes: list[Any] = []
    name = value.name

    def op(op_type: str, inputs: list[Any], attrs: dict | None = None, tag: str = "") -> Any:
        node = ir.node(op_type, inputs, attrs or {}, name=f"{name}__mx_{tag or op_type}_{len(nodes)}",
                       outputs=[ir.Value(name=f"{name}__mx_{tag or op_type}_{len(nodes)}")])
        nodes.append(node)
        return node.outputs[0]

    def const(array: Any, tag: str) -> Any:
        return op("Constant", [], {"value": ir.tensor(np.asarray(array))}, tag)

    shape = op("Shape", [value])
    last = op("Gather", [shape, const(np.int64(-1), "last_axis")], {"axis": 0})
    pad_len = op("Mod", [op("Sub", [const(np.int64(BLOCK), "block"), op("Mod", [last, const(np.int64(BLOCK), "b2")])]),
                         const(np.int64(BLOCK), "b3")])
    rank = len(value.shape) if value.shape is not None else 4
    zeros = const(np.zeros(2 * rank - 1, dtype=np.int64), "zeros")
    pads = op("Concat", [zeros, op("Unsqueeze", [pad_len, const(np.array([0], np.int64), "ax0")])], {"axis": 0})
    padded = op("Pad", [value, pads])
    head = op("Slice", [op("Shape", [padded]), const(np.array([0], np.int64), "s0"),
                        const(np.array([-1], np.int64), "s1")])
    blocks = op("Reshape", [padded, op("Concat", [head, const(np.array([-1, BLOCK], np.int64), "tail")], {"axis": 0})])
    if opset >= 18:  # axes became an input
        amax = op("ReduceMax", [op("Abs", [blocks]), const(np.array([-1], np.int64), "axes")], {"keepdims": 1})
    else:
        amax = op("ReduceMax", [op("Abs", [blocks])], {"axes": [-1], "keepdims": 1})
    amax = op("Max", [amax, const(np.float32(2.0 ** -126), "tiny")])
    exponent = op("Floor", [op("Div", [op("Log", [amax]), const(np.float32(np.log(2.0)), "ln2")])])
    two = const(np.float32(2.0), "two")
    ratio = op("Div", [amax, op("Pow", [two, exponent])])
    exponent = op("Add", [exponent, op("Sub", [op("Cast", [op("GreaterOrEqual", [ratio, two])], {"to": ir.DataType.FLOAT}),
                                                 op("Cast", [op("Less", [ratio, const(np.float32(1.0), "one")])],
                                                    {"to": ir.DataType.FLOAT})])])
    scale = op("Pow", [two, exponent])
    unit = const(np.float32(2.0 ** INT8_FRACTION), "unit")
    q = op("Clip", [op("Round", [op("Mul", [op("Div", [blocks, scale]), unit])]),
                    const(np.float32(-INT8_MAX), "lo"), const(np.float32(INT8_MAX), "hi")])
    dq = op("Mul", [op("Div", [q, unit]), scale])
    flat = op("Reshape", [dq, op("Shape", [padded])])
    starts = const(np.array([0], np.int64), "start")
    result = op("Slice", [flat, starts, op("Unsqueeze", [last, const(np.array([0], np.int64), "ax1")]),
                          const(np.array([-1], np.int64), "axis")])
    return nodes, result
