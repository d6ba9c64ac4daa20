"""A module's weights into an exported graph without a second copy in memory.

The TorchScript exporter, asked for the weights, builds the whole model proto in memory, then its
serialized bytes, with every Linear weight transposed by its constant folding: about 4x the
weights over the model itself. Exported without them (``export_params=False``, no folding), the
graph takes each parameter as an input named after it; ``attach`` turns those inputs into
initializers that view the module's own tensors (or, for a module of placeholder weights, read
each from the checkpoint when written: streamed_weights.py), and ``fold_transposes`` replaces each
``Transpose(weight)`` by a lazily computed initializer, made while it is written to the external
data file and dropped after. The rest of the folding (shapes, small constants) is the rewrite
stage's optimizer's.
"""
from __future__ import annotations

import functools
from typing import Any


def attach(model: Any, module: Any) -> int:
    """Graph inputs named like the module's parameters or buffers become initializers viewing them; how many."""
    import onnx_ir as ir

    from passes.lib import streamed_weights

    tensors = {**dict(module.named_buffers()), **dict(module.named_parameters())}
    streamed = getattr(module, streamed_weights.STREAMED, None) or {}
    graph = model.graph
    attached = 0
    for value in list(graph.inputs):
        tensor = tensors.get(value.name)
        if tensor is None:
            continue
        if value.name in streamed:  # a placeholder: read from the checkpoint when written
            value.const_value = streamed_weights.lazy(streamed[value.name], ir.DataType.FLOAT)
        else:
            value.const_value = ir.Tensor(tensor.detach().numpy(), name=value.name)  # a view: no copy
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
        tensor = source.const_value  # read when written (it may be lazy itself)
        dims = tuple(tensor.shape.numpy())
        perm = tuple(perm_attr.as_ints()) if perm_attr is not None else tuple(reversed(range(len(dims))))
        shape = tuple(dims[p] for p in perm)

        def transposed(t=tensor, p=perm) -> Any:
            return ir.Tensor(np.ascontiguousarray(np.transpose(t.numpy(), p)))

        out = node.outputs[0]
        lazy = (_blockwise_transposed() if perm == (1, 0) else ir.LazyTensor)(
            transposed, dtype=source.const_value.dtype, shape=ir.Shape(shape))
        if perm == (1, 0):
            lazy.source = tensor
        value = ir.Value(name=f"{source.name}.T" if perm == (1, 0) else f"{source.name}.perm{''.join(map(str, perm))}",
                         shape=ir.Shape(shape), type=ir.TensorType(source.const_value.dtype), const_value=lazy)
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


BLOCK_BYTES = 16 << 20


@functools.cache
def _blockwise_transposed() -> type:
    """A lazy 2-D transpose written to its file a block of rows at a time: the weight is held once,
    never beside a whole transposed copy (the largest weight, a head, would double the peak)."""
    import numpy as np
    import onnx_ir as ir

    class BlockwiseTransposed(ir.LazyTensor):
        source: Any = None

        def tofile(self, file: Any) -> None:
            array = self.source.numpy()
            rows = max(1, BLOCK_BYTES // max(1, array.shape[0] * array.itemsize))
            for first in range(0, array.shape[1], rows):
                file.write(np.ascontiguousarray(array[:, first:first + rows].T).tobytes())

    return BlockwiseTransposed
