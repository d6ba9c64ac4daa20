"""Tied word embeddings stored once in a CPU program: the head reads the embedding's table, in every precision.

The exporter stores a tied table twice: the Gather's ``[vocab, hidden]`` table and the head
MatMul's ``[hidden, vocab]`` transpose (SmolLM2: 113 MB each). ``tie_head`` (compile) makes the
head read the table itself (``FusedMatMul(transB=1)``, com.microsoft). ``untie`` and
``share_quantized_table`` (the quantize pass) put the transpose back for onnxruntime's
quantizer, then make the embedding gather its rows from the head's ``MatMulNBits`` blocks
(``[vocab, blocks, bytes]``: a row per token, as the Gather reads): ``GatherBlockQuantized``
for blocks without or with uint8 zero points, a small dequantizing subgraph for float zero
points (HQQ).
Either way the gathered rows equal the head's dequantized weights.
"""
from __future__ import annotations

from typing import Any

from passes.targets.ort.graph import MSFT, _drop_unused_initializers


def tie_head(model: Any) -> int:
    """MatMul(x, W) where W is the transpose of a table some Gather reads: FusedMatMul(x, table, transB=1).
    Returns how many heads now share their embedding's table (the transposed copy is dropped)."""
    import numpy as np
    import onnx_ir as ir

    tables = embedding_tables(model)
    tied = 0
    for node in list(model.graph):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        weight = node.inputs[1]
        if weight is None or weight.const_value is None or len(weight.const_value.shape) != 2:
            continue
        w = weight.const_value
        table = next((t for t in tables if tuple(t.const_value.shape) == tuple(reversed(w.shape))
                      and t.const_value.dtype == w.dtype), None)
        if table is None or not np.array_equal(table.const_value.numpy().T, w.numpy()):
            continue
        head = ir.node("FusedMatMul", [node.inputs[0], table], attributes={"transB": 1, "alpha": 1.0},
                       domain=MSFT, name=node.name)
        replace(model, node, head)
        tied += 1
    if tied:
        model.opset_imports.setdefault(MSFT, 1)
        _drop_unused_initializers(model)
    return tied


def embedding_tables(model: Any) -> list[Any]:
    """The constant 2-D tables Gather nodes read rows of (by token id) on axis 0."""
    found: dict[str, Any] = {}
    for node in model.graph:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx"):
            continue
        data = node.inputs[0]
        if (data is not None and data.const_value is not None and len(data.const_value.shape) == 2
                and node.attributes.get_int("axis", 0) == 0):
            found[data.name] = data
    return list(found.values())


def untie(model: Any) -> dict[str, str]:
    """Tied heads back to MatMul(x, table^T) (a transposed copy in memory, for the quantizer).
    Returns {head output name: table name}."""
    import onnx_ir as ir

    tables = {t.name: t for t in embedding_tables(model)}
    heads: dict[str, str] = {}
    for node in list(model.graph):
        table = node.inputs[1] if node.op_type == "FusedMatMul" and len(node.inputs) > 1 else None
        a = node.attributes
        if table is None or table.name not in tables or a.get_int("transB", 0) != 1 or a.get_int("transA", 0) != 0 \
                or a.get_float("alpha", 1.0) != 1.0:
            continue
        copy = ir.Value(name=f"{table.name}.T", const_value=ir.Tensor(table.const_value.numpy().T.copy(),
                                                                       name=f"{table.name}.T"))
        model.graph.register_initializer(copy)
        head = ir.node("MatMul", [node.inputs[0], copy], name=node.name)
        heads[node.outputs[0].name] = table.name
        replace(model, node, head)
    return heads


def share_quantized_table(model: Any, heads: dict[str, str]) -> int:
    """After quantization: each tied head that became MatMulNBits lends its blocks to its embedding's
    Gather; a head left float (excluded) reads the float table again. Returns how many tables are shared."""
    import onnx_ir as ir

    producers = {n.outputs[0].name: n for n in model.graph if n.outputs}
    shared = 0
    for output, table_name in heads.items():
        head = producers[output]
        table = model.graph.initializers[table_name]
        if head.op_type != "MatMulNBits":  # kept float: tied again
            replace(model, head, ir.node("FusedMatMul", [head.inputs[0], table], domain=MSFT, name=head.name,
                                          attributes={"transB": 1, "alpha": 1.0}))
            continue
        for gather in [u.node for u in table.uses() if u.node.op_type == "Gather"]:
            replace(model, gather, *_quantized_gather(model, head, gather.inputs[1], gather.name or head.name))
        shared += 1
    _drop_unused_initializers(model)
    return shared


def _quantized_gather(model: Any, head: Any, ids: Any, prefix: str) -> list[Any]:
    """Nodes gathering rows ``ids`` of ``head``'s MatMulNBits weight, dequantized; the last one's output is the rows.
    Their constants' names start with ``prefix``."""
    import numpy as np
    import onnx_ir as ir

    nodes: list[Any] = []

    def add(op: str, *inputs: Any, domain: str = "", **attributes: Any) -> Any:
        nodes.append(ir.node(op, list(inputs), attributes=attributes, domain=domain))
        return nodes[-1].outputs[0]

    def const(name: str, value: Any, dtype: Any = np.int64) -> Any:
        v = ir.Value(name=f"{prefix}_{name}", const_value=ir.Tensor(np.array(value, dtype=dtype), name=f"{prefix}_{name}"))
        model.graph.register_initializer(v)
        return v

    blocks, scales = head.inputs[1], head.inputs[2]
    zeros = head.inputs[3] if len(head.inputs) > 3 else None
    n, kb, _ = blocks.const_value.shape
    k, block, bits = (head.attributes[a].as_int() for a in ("K", "block_size", "bits"))
    block_scales = add("Reshape", scales, const("scales_shape", [n, kb, 1]))  # reshapes of constants: folded at load
    gbq = {"gather_axis": 0, "block_size": block, "bits": bits, "domain": MSFT}
    if zeros is None:  # symmetric: MatMulNBits' default zero point, which GatherBlockQuantized shares for uint8 data
        rows = add("GatherBlockQuantized", blocks, ids, block_scales, quantize_axis=2, **gbq)
    elif zeros.const_value is not None and zeros.const_value.dtype == ir.DataType.UINT8:
        # uint8 zero points, packed along the blocks of a row as MatMulNBits stores them: the 2-D form reads them so
        rows = add("GatherBlockQuantized", add("Reshape", blocks, const("row_bytes", [n, -1])), ids,
                   add("Reshape", scales, const("row_scales", [n, kb])),
                   add("Reshape", zeros, const("row_zeros", [n, -1])), quantize_axis=1, **gbq)
    elif bits == 4 and zeros.const_value is not None and zeros.const_value.dtype == scales.const_value.dtype:
        # float zero points (HQQ): (q - zero) * scale, computed on the gathered rows only
        real = scales.const_value.dtype
        packed = add("Gather", blocks, ids, axis=0)  # two values a byte, the first in the low nibble
        high = add("Cast", add("BitShift", packed, const("shift", 4, np.uint8), direction="RIGHT"), to=real)
        low = add("Sub", add("Cast", packed, to=real), add("Mul", high, const("sixteen", 16, real.numpy())))
        last = const("last", [-1])
        pairs = add("Concat", add("Unsqueeze", low, last), add("Unsqueeze", high, last), axis=-1)
        values = add("Reshape", pairs, add("Concat", add("Shape", ids), const("block_shape", [kb, block]), axis=0))
        zero_rows = add("Gather", add("Reshape", zeros, const("zeros_shape", [n, kb, 1])), ids, axis=0)
        rows = add("Mul", add("Sub", values, zero_rows), add("Gather", block_scales, ids, axis=0))
    else:
        raise ValueError(f"{head.name}: a tied table in {bits}-bit blocks with zero points of type "
                         f"{zeros.dtype} cannot be shared")
    rows = add("Reshape", rows, add("Concat", add("Shape", ids), const("row_shape", [kb * block]), axis=0))
    if kb * block != k:  # the last block is padded
        add("Slice", rows, const("start", [0]), const("end", [k]), const("axis", [-1]))
    return nodes


def replace(model: Any, old: Any, *new: Any) -> None:
    """``new`` in ``old``'s place: the last new node's output takes over ``old``'s (its uses, name and type)."""
    import onnx_ir as ir

    ir.convenience.replace_nodes_and_values(model.graph, old, [old], list(new), [old.outputs[0]], [new[-1].outputs[0]])
