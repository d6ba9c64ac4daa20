"""The graph rules HTP needs: each takes an onnx_ir model and returns it rewritten (compile_qnn applies them in order).

The AI 100 graph as it is (rewrite.rules optimize, rms_norm) fails to finalize on HTP; these
rules make it a graph QNN takes (docs/qnn.md says which operator failed, and why each exists):

- ``native_rms_norm``: the CustomRMSNorm function (the AI 100 op) and any decomposed RMSNorm
  left -> ``SimplifiedLayerNormalization``, which QNN maps to its own RmsNorm (the decomposed
  form's squared sum also overflows fp16 once |x| passes ~256).
- ``square_as_mul``: Pow(x, 2) -> Mul(x, x).
- ``static_shapes``: every dimension fixed from one specialization's symbols, the shape
  arithmetic then folded to constants: HTP graphs are static.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from passes.rewrites import rms_norm

CUSTOM_DOMAIN, CUSTOM_NAME = rms_norm.DOMAIN, rms_norm.NAME
DEFAULT_EPSILON = 1e-6  # CustomRMSNorm's own default (passes/rewrites/rms_norm.py)


@dataclass(frozen=True)
class Rule:
    name: str
    doc: str
    apply: Callable[..., Any]


def native_rms_norm(model: Any) -> Any:
    """CustomRMSNorm nodes and decomposed RMSNorms -> SimplifiedLayerNormalization (axis -1, fp32 stash)."""
    from onnxscript import rewriter
    from onnxscript.rewriter import pattern

    def custom(op: Any, x: Any, weight: Any) -> Any:
        return op.CustomRMSNorm(x, weight, _domain=CUSTOM_DOMAIN, _allow_other_attributes=True, _outputs=["norm"])

    def native(op: Any, x: Any, weight: Any, norm: Any) -> Any:
        eps = norm.producer().attributes.get_float("epsilon", DEFAULT_EPSILON)
        return _simplified(op, x, weight, eps)

    model = rewriter.rewrite(model, pattern.RewriteRuleSet([pattern.RewriteRule(custom, native, name="native_rms_norm")]))
    model = rms_norm.replace_rms_norms(model, _decomposed, "native_rms_norm")
    if not any(node.domain == CUSTOM_DOMAIN for node in model.graph.all_nodes()):
        model.functions.pop((CUSTOM_DOMAIN, CUSTOM_NAME, ""), None)
        model.opset_imports.pop(CUSTOM_DOMAIN, None)
    return model


def _decomposed(op: Any, x: Any, weight: Any, eps: Any, **_: Any) -> Any:
    return _simplified(op, x, weight, rms_norm.epsilon(eps))


def _simplified(op: Any, x: Any, weight: Any, eps: float) -> Any:
    out = op.SimplifiedLayerNormalization(x, weight, axis=-1, epsilon=eps, stash_type=1)
    # ONNX's shape inference does not know this ONNX Runtime op: its output is shaped as x here.
    out.shape, out.type = x.shape, x.type
    return out


def square_as_mul(model: Any) -> Any:
    """Pow(x, 2) -> Mul(x, x)."""
    from onnxscript import optimizer, rewriter
    from onnxscript.rewriter import pattern

    def square(op: Any, x: Any, two: Any) -> Any:
        return op.Pow(x, two)

    def is_two(context: Any, x: Any, two: Any, **_: Any) -> bool:
        value = two.const_value
        return value is not None and value.size == 1 and float(value.numpy().reshape(())) == 2.0

    def mul(op: Any, x: Any, two: Any) -> Any:
        return op.Mul(x, x)

    optimizer.basic_constant_propagation(model.graph)  # Constant nodes' values, for the condition
    return rewriter.rewrite(model, pattern.RewriteRuleSet([pattern.RewriteRule(square, mul, is_two, name="square_as_mul")]))


def static_shapes(model: Any, symbols: Mapping[str, int]) -> Any:
    """Every dimension named by a symbol of the specialization set to its value (the graph's inputs
    and outputs must then be static), then shapes inferred again and what they decide folded."""
    import onnx_ir as ir

    def fixed(shape: Any) -> Any:
        return ir.Shape([int(symbols[d.value]) if isinstance(d, ir.SymbolicDim) and d.value in symbols else d
                         for d in shape])

    for value in (*model.graph.inputs, *model.graph.outputs):
        if value.shape is None:
            raise ValueError(f"static_shapes: {value.name} has no shape")
        value.shape = fixed(value.shape)
        left = [d.value for d in value.shape if isinstance(d, ir.SymbolicDim)]
        if left:
            raise ValueError(f"static_shapes: dimension {left[0]!r} of {value.name} is not a symbol of the "
                             f"specialization; allowed: {', '.join(sorted(symbols))}")
    for node in model.graph.all_nodes():
        for value in node.outputs:
            if value.shape is not None:
                value.shape = fixed(value.shape)
    # Shapes inferred again from the fixed inputs, and what they decide folded to constants (Shape,
    # the index arithmetic of the KV scatter and gather): what is left computes values, not shapes.
    # The functions inlined first; then the rewrite stage's optimizer (its quadratic rules left out).
    from onnxscript import optimizer

    from passes.rewrites.rules import optimize

    optimizer.inline(model)
    return optimize(model)


# Applied in this order to the rewrite stage's graph; static_shapes (one specialization's) after them.
RULES = (Rule("native_rms_norm", native_rms_norm.__doc__ or "", native_rms_norm),
         Rule("square_as_mul", square_as_mul.__doc__ or "", square_as_mul))
STATIC = Rule("static_shapes", static_shapes.__doc__ or "", static_shapes)
