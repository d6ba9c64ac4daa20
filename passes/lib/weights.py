"""A module's weights into an exported graph without a second copy in memory.

The TorchScript exporter, asked for the weights, builds the whole model proto in memory, then its
serialized bytes, with every Linear weight transposed by its constant folding: about 4x the
weights over the model itself. Exported without them (``export_params=False``, no folding), the
graph takes each parameter as an input named after it; ``attach`` turns those inputs into
initializers that view the module's own tensors, and ``fold_transposes`` replaces each
``Transpose(weight)`` by a lazily computed initializer, made while it is written to the external
data file and dropped after. The rest of the folding (shapes, small constants) is the rewrite
stage's optimizer's.
"""
from __future__ import annotations

from typing import Any


def attach(model: Any, module: Any) -> int:
    """Graph inputs named like the module's parameters or buffers become initializers viewing them; how many."""
    import onnx_ir as ir

    tensors = {**dict(module.named_buffers()), **dict(module.named_parameters())}
    graph = model.graph
    attached = 0
    for value in list(graph.inputs):
        tensor = tensors.get(value.name)
        if tensor is None:
            continue
        array = tensor.detach().numpy()  # a view: no copy
        value.const_value = ir.Tensor(array, name=value.name)
        graph.inputs.remove(value)
        graph.register_initializer(value)
        attached += 1
    return attached


def fold_transposes(model: Any) -> int:
    """Each Transpose of an initializer replaced by a lazily transposed initializer (initializers left
    unused dropped); how many."""
    import numpy as np
    import onnx_ir as ir

    graph = model.graph
    folded = 0
    for node in list(graph):
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
            continue
        source = node.inputs[0]
        if source is None or source.name not in graph.initializers or source.const_value is None:
            continue
        perm_attr = node.attributes.get("perm")
        array = source.const_value.numpy()
        perm = tuple(perm_attr.as_ints()) if perm_attr is not None else tuple(reversed(range(array.ndim)))
        shape = tuple(array.shape[p] for p in perm)

        def transposed(a=array, p=perm) -> Any:
            return ir.Tensor(np.ascontiguousarray(np.transpose(a, p)))

        out = node.outputs[0]
        value = ir.Value(name=f"{source.name}.T" if perm == (1, 0) else f"{source.name}.perm{''.join(map(str, perm))}",
                         shape=ir.Shape(shape), type=ir.TensorType(source.const_value.dtype),
                         const_value=ir.LazyTensor(transposed, dtype=source.const_value.dtype, shape=ir.Shape(shape)))
        if value.name in graph.initializers:  # the same weight transposed the same way before
            value = graph.initializers[value.name]
        else:
            graph.register_initializer(value)
        ir.convenience.replace_all_uses_with(out, value)
        graph.remove(node, safe=True)
        folded += 1
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_output():
            del graph.initializers[name]
    return folded
