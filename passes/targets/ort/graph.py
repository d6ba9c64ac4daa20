"""The CPU program's graph, made cheaper per step for ONNX Runtime: fewer, larger nodes, same numbers.

- ``drop_identity_reshapes``: the view/reshape chains an exported model carries around its
  attention (``[B, S, H*D] -> [B, S, H, D] -> [B, S, H*D]``, each shape computed at run time
  from Shape/Gather/Concat nodes) are removed where ONNX Runtime's symbolic shape inference
  proves a chain's output has its input's shape; the shape computations then go too.
- ``fuse_norms``: a residual Add feeding an RMSNorm becomes ``SkipSimplifiedLayerNormalization``
  (com.microsoft), which also returns the sum for the next residual. An RMSNorm without one
  (the first layer's) is written in standard ops, which ONNX Runtime fuses when it loads the
  graph: its own ``SimplifiedLayerNormalization`` sits in the ONNX domain, where the onnx
  library's checker knows no such op.
- ``pack_qkv``: a GroupQueryAttention whose query, key and value are MatMuls of one input by
  constant weights reads one MatMul over the concatenated weights (its packed-QKV form).

Decode steps of a small model are dominated by node count as much as by bytes: these take
SmolLM2's graph from about 1,650 nodes to about 330. All work on onnx_ir models.
"""
from __future__ import annotations

from typing import Any

MSFT = "com.microsoft"


def pack_qkv(model: Any) -> int:
    """GroupQueryAttention nodes fed by three MatMuls of one input: one packed MatMul; return how many."""
    import numpy as np
    import onnx_ir as ir

    packed = 0
    for node in list(model.graph):
        if node.op_type != "GroupQueryAttention" or node.domain != MSFT or len(node.inputs) < 3:
            continue
        producers = [v.producer() if v is not None else None for v in node.inputs[:3]]
        if not all(p is not None and p.op_type == "MatMul" and p.domain in ("", "ai.onnx") for p in producers):
            continue
        x = producers[0].inputs[0]
        weights = [p.inputs[1] for p in producers]
        if any(p.inputs[0] is not x for p in producers) or not all(
                w.is_initializer() and w.const_value is not None and len(w.shape) == 2 for w in weights):
            continue
        if any(len(p.outputs[0].uses()) != 1 for p in producers):  # q, k or v is read elsewhere too
            continue
        name = f"{producers[0].name}_qkv"
        joined = np.concatenate([w.const_value.numpy() for w in weights], axis=1)
        weight = ir.Value(name=f"{name}.weight", const_value=ir.Tensor(joined, name=f"{name}.weight"))
        model.graph.register_initializer(weight)
        matmul = ir.node("MatMul", [x, weight], name=name)
        model.graph.insert_before(producers[0], [matmul])
        node.replace_input_with(0, matmul.outputs[0])
        node.replace_input_with(1, None)
        node.replace_input_with(2, None)
        for p in producers:
            model.graph.remove(p, safe=True)
        packed += 1
    _drop_unused_initializers(model)
    return packed


def fuse_norms(model: Any) -> tuple[Any, int]:
    """RMSNorm -> SimplifiedLayerNormalization, then residual Add + it -> SkipSimplifiedLayerNormalization.
    Returns the model and how many skip fusions were made."""
    from onnxscript import rewriter
    from onnxscript.rewriter import pattern

    from passes.rewrites.rms_norm import epsilon, replace_rms_norms

    def simplified(op: Any, x: Any, weight: Any, eps: Any, **_: Any) -> Any:
        return op.SimplifiedLayerNormalization(x, weight, axis=-1, epsilon=epsilon(eps), stash_type=1)

    model = replace_rms_norms(model, simplified, "SimplifiedLayerNormalization")

    def skip_target(op: Any, a: Any, b: Any, weight: Any, eps: Any) -> Any:
        total = op.Add(a, b)
        normed = op.SimplifiedLayerNormalization(total, weight, axis=-1, epsilon=eps, _allow_other_attributes=True)
        return normed, total

    def skip_replacement(op: Any, a: Any, b: Any, weight: Any, eps: Any, **_: Any) -> Any:
        out = op.SkipSimplifiedLayerNormalization(a, b, weight, epsilon=eps, _domain=MSFT, _outputs=4)
        return out[0], out[3]

    def lone_target(op: Any, x: Any, weight: Any, eps: Any) -> Any:
        return op.SimplifiedLayerNormalization(x, weight, axis=-1, epsilon=eps, _allow_other_attributes=True)

    def standard_ops(op: Any, x: Any, weight: Any, eps: Any, **_: Any) -> Any:
        two, eps_ = op.Constant(value_float=2.0), op.Constant(value_float=eps.value)
        if opset >= 18:
            mean = op.ReduceMean(op.Pow(x, two), op.Constant(value_ints=[-1]), keepdims=1)
        else:
            mean = op.ReduceMean(op.Pow(x, two), axes=[-1], keepdims=1)
        return op.Mul(op.Div(x, op.Sqrt(op.Add(mean, eps_))), weight)

    opset = model.opset_imports.get("", 17)
    rule = pattern.RewriteRule(skip_target, skip_replacement, name="SkipSimplifiedLayerNormalization")
    model = rewriter.rewrite(model, pattern.RewriteRuleSet([rule], commute=True))
    lone = pattern.RewriteRule(lone_target, standard_ops, name="RMSNormInStandardOps")
    model = rewriter.rewrite(model, pattern.RewriteRuleSet([lone]))
    fused = sum(1 for n in model.graph if n.op_type == "SkipSimplifiedLayerNormalization")
    if fused:
        model.opset_imports.setdefault(MSFT, 1)
    return model, fused


def bias_gemms(model: Any) -> tuple[Any, int]:
    """MatMul of a 3D activation by a 2D weight, plus a 1D bias -> Gemm over the flattened rows
    (bias added inside the GEMM, not in a separate pass over its output), reshaped back.
    ONNX Runtime fuses MatMul + Add into Gemm only for 2D inputs; an encoder's Linear layers run
    on [batch, seq, hidden]. Returns the model and how many were rewritten."""
    from onnxscript import rewriter
    from onnxscript.rewriter import pattern

    def target(op: Any, x: Any, w: Any, b: Any) -> Any:
        return op.Add(op.MatMul(x, w), b)

    def fits(context: Any, x: Any, w: Any, b: Any, **_: Any) -> bool:
        return (w.const_value is not None and b.const_value is not None and len(w.shape or ()) == 2
                and len(b.shape or ()) == 1 and x.shape is not None and len(x.shape) == 3)

    def replacement(op: Any, x: Any, w: Any, b: Any, **_: Any) -> Any:
        rows = op.Reshape(x, op.Constant(value_ints=[-1, w.shape[0]]))
        leading = op.Slice(op.Shape(x), op.Constant(value_ints=[0]), op.Constant(value_ints=[2]))
        shape = op.Concat(leading, op.Constant(value_ints=[w.shape[1]]), axis=0)
        return op.Reshape(op.Gemm(rows, w, b), shape)

    rule = pattern.RewriteRule(target, replacement, fits, name="BiasGemm")
    model = rewriter.rewrite(model, pattern.RewriteRuleSet([rule], commute=True))
    return model, sum(1 for n in model.graph if n.op_type == "Gemm")


def drop_identity_reshapes(model: Any, shapes: dict[str, tuple]) -> int:
    """Remove Reshape chains whose output has, symbolically, the shape of their input; return how many.

    ``shapes``: ``symbolic_shapes`` of the same graph (before any other change to it)."""
    dropped = 0
    for node in list(model.graph):
        if node.op_type != "Reshape" or node.outputs[0].is_graph_output():
            continue
        source = node.inputs[0]
        while source.producer() is not None and source.producer().op_type == "Reshape":
            source = source.producer().inputs[0]
        out = shapes.get(node.outputs[0].name)
        if out is not None and out == shapes.get(source.name) and all(d is not None for d in out):
            node.outputs[0].replace_all_uses_with(source)
            dropped += 1
    _drop_dead_nodes(model)
    return dropped


def symbolic_shapes(model_file: Any) -> dict[str, tuple]:
    """{value name: symbolic shape} of a saved model, from ONNX Runtime's symbolic shape inference.

    Its weights are never read: initializers stored as external data become shaped graph inputs.
    {} when the inference cannot follow the graph (its reshapes are then kept)."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    proto = onnx.load(str(model_file), load_external_data=False)
    inline, shaped = [], []
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            shaped.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        else:
            inline.append(tensor)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(inline)
    proto.graph.input.extend(shaped)
    try:
        inferred = SymbolicShapeInference.infer_shapes(proto, auto_merge=True, guess_output_rank=True)
    except Exception:  # noqa: BLE001 - a graph it cannot follow keeps its reshapes
        return {}
    found = {}
    for info in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input):
        dims = info.type.tensor_type.shape.dim
        found[info.name] = tuple(d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
                                 for d in dims)
    return found


def _drop_dead_nodes(model: Any) -> None:
    import onnx_ir.passes.common as common

    common.RemoveUnusedNodesPass()(model)
    _drop_unused_initializers(model)


def _drop_unused_initializers(model: Any) -> None:
    for name, value in list(model.graph.initializers.items()):
        if not value.uses() and not value.is_graph_output():
            del model.graph.initializers[name]
