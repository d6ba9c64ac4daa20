"""Rewrite `rms_norm`: RMSNorm subgraphs -> CustomRMSNorm (AI 100 custom op) as a model-local function."""
from __future__ import annotations

from typing import Any

# The op the AI 100 compiler knows (name, domain, attribute as in the reference library);
# its ONNX body below lets ONNX Runtime run the same graph.
DOMAIN, NAME = "com.qti.aisw.onnx", "CustomRMSNorm"


def apply(model: Any) -> Any:
    model = replace_rms_norms(model, _replacement, NAME)
    if any(node.domain == DOMAIN for node in model.graph.all_nodes()):
        model.opset_imports[DOMAIN] = 1
        function = _function(model.opset_imports[""])
        model.functions[function.identifier()] = function
    return model


def replace_rms_norms(model: Any, replacement: Any, name: str) -> Any:
    """Every RMSNorm subgraph replaced: ``replacement(op, x, weight, eps)`` gives the new value
    (``_scalar(eps)`` is the epsilon). Shared with the ONNX Runtime program's fusions."""
    from onnxscript import optimizer, rewriter
    from onnxscript.rewriter import pattern

    optimizer.basic_constant_propagation(model.graph)  # Constant nodes' values, for the conditions
    rules = [pattern.RewriteRule(_target(reciprocal, axes_input), replacement, _condition,
                                 name=f"{name}({'Reciprocal' if reciprocal else 'Div'}, axes {'input' if axes_input else 'attr'})")
             for reciprocal in (False, True) for axes_input in (False, True)]
    return rewriter.rewrite(model, pattern.RewriteRuleSet(rules, commute=True))


def epsilon(eps: Any) -> float | None:
    """The float value of a matched epsilon constant."""
    return _scalar(eps)


def _target(reciprocal: bool, axes_input: bool) -> Any:
    """weight * (x * 1/sqrt(mean(x^2, last axis) + eps)), as either exporter writes it."""

    def target(op: Any, x: Any, weight: Any, two: Any, eps: Any, one: Any, axes: Any) -> Any:
        square = op.Pow(x, two)
        if axes_input:  # opset >= 18
            variance = op.ReduceMean(square, axes, keepdims=1, _allow_other_attributes=True)
        else:
            variance = op.ReduceMean(square, axes=[-1], keepdims=1)
        root = op.Sqrt(op.Add(variance, eps))
        inverse = op.Reciprocal(root) if reciprocal else op.Div(one, root)
        return op.Mul(weight, op.Mul(x, inverse))

    return target


def _scalar(value: Any) -> float | None:
    tensor = None if value is None else value.const_value
    if tensor is None or tensor.size != 1:
        return None
    return float(tensor.numpy().reshape(()))


def _condition(context: Any, x: Any, weight: Any, two: Any, eps: Any, **bound: Any) -> bool:
    if _scalar(two) != 2.0 or _scalar(eps) is None:
        return False
    one, axes = bound.get("one"), bound.get("axes")
    if one is not None and _scalar(one) != 1.0:
        return False
    if axes is not None and (axes.const_value is None or axes.const_value.numpy().tolist() not in ([-1], -1)):
        return False
    return weight.shape is not None and len(weight.shape) == 1


def _replacement(op: Any, x: Any, weight: Any, eps: Any, **_: Any) -> Any:
    return op.CustomRMSNorm(x, weight, epsilon=_scalar(eps), _domain=DOMAIN)


def _function(opset: int) -> Any:
    """CustomRMSNorm(hidden_states, weight; epsilon) written in standard ONNX ops of `opset`."""
    import numpy as np
    import onnx_ir as ir

    x, weight = ir.Value(name="hidden_states"), ir.Value(name="weight")
    nodes = []

    def add(op_type: str, inputs: list, attributes: dict | None = None) -> Any:
        node = ir.node(op_type, inputs, attributes or {})
        nodes.append(node)
        return node.outputs[0]

    two = add("Constant", [], {"value": ir.tensor(np.array(2.0, dtype=np.float32))})
    square = add("Pow", [x, two])
    if opset >= 18:
        axes = add("Constant", [], {"value": ir.tensor(np.array([-1], dtype=np.int64))})
        variance = add("ReduceMean", [square, axes], {"keepdims": 1})
    else:
        variance = add("ReduceMean", [square], {"axes": [-1], "keepdims": 1})
    eps_node = ir.node("Constant", [], {"value_float": ir.RefAttr("value_float", "epsilon", ir.AttributeType.FLOAT)})
    nodes.append(eps_node)
    root = add("Sqrt", [add("Add", [variance, eps_node.outputs[0]])])
    out = add("Mul", [weight, add("Mul", [x, add("Reciprocal", [root])])])
    graph = ir.Graph([x, weight], [out], nodes=nodes, opset_imports={"": opset}, name=NAME)
    return ir.Function(DOMAIN, NAME, graph=graph, attributes=[ir.Attr("epsilon", ir.AttributeType.FLOAT, 1e-6)])
