"""The AI 100 graph's KV-cache ops: CtxScatter / CtxGather and their continuous-batching forms.

The compiler knows these ops (domain ``com.qualcomm.cloud``): the KV write puts only the new
positions into the retained cache, and the read hands attention the cache with every slot past
a row's last position replaced by slot 0 (masked anyway, never uninitialized memory). With
continuous batching the write and the read take ``batch_index``: only the rows of this batch are
touched, not whole KV rows. Each op is a torch custom op (its reference implementation runs in
PyTorch and while tracing) and an onnxscript function, emitted as a model-local ONNX function
by the TorchScript exporter, so ONNX Runtime runs the same graph the compiler sees.

Shapes: data [B or full batch, heads, ctx, head_dim]; position_ids [B, S] (-1: padding, written
to the last slot as a negative index counts from the end); updates [B, heads, S, head_dim];
batch_index [B, 1]; ctx_indices [B, ctx]. Imported only when the transform runs (torch).
"""
from __future__ import annotations

from typing import Any

import onnxscript
import torch
from onnxscript import FLOAT, INT64

DOMAIN = "com.qualcomm.cloud"


def _positions(position_ids: torch.Tensor, ctx_len: int) -> torch.Tensor:
    return torch.where(position_ids < 0, position_ids + ctx_len, position_ids)


@torch.library.custom_op("ai100pipeline::ctx_scatter", mutates_args=())
def ctx_scatter(data: torch.Tensor, position_ids: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
    """data with data[b, h, position_ids[b, s]] = updates[b, h, s]."""
    index = _positions(position_ids, data.shape[2])[:, None, :, None].expand(-1, data.shape[1], -1, data.shape[3])
    return data.scatter(2, index, updates)


@torch.library.custom_op("ai100pipeline::ctx_gather", mutates_args=())
def ctx_gather(data: torch.Tensor, ctx_indices: torch.Tensor) -> torch.Tensor:
    """out[b, h, c] = data[b, h, ctx_indices[b, c]]."""
    index = ctx_indices[:, None, :, None].expand(-1, data.shape[1], -1, data.shape[3])
    return data.gather(2, index)


@torch.library.custom_op("ai100pipeline::ctx_scatter_cb", mutates_args=())
def ctx_scatter_cb(data: torch.Tensor, batch_index: torch.Tensor, position_ids: torch.Tensor,
                   updates: torch.Tensor) -> torch.Tensor:
    """data with data[batch_index[b], h, position_ids[b, s]] = updates[b, h, s]."""
    out = data.clone()
    rows = batch_index[:, 0]
    out[rows] = ctx_scatter(data[rows], position_ids, updates)
    return out


@torch.library.custom_op("ai100pipeline::ctx_gather_cb", mutates_args=())
def ctx_gather_cb(data: torch.Tensor, batch_index: torch.Tensor, ctx_indices: torch.Tensor) -> torch.Tensor:
    """out[b, h, c] = data[batch_index[b], h, ctx_indices[b, c]]."""
    return ctx_gather(data[batch_index[:, 0]], ctx_indices)


@ctx_scatter.register_fake
def _(data, position_ids, updates):
    return torch.empty_like(data)


@ctx_gather.register_fake
def _(data, ctx_indices):
    return data.new_empty((ctx_indices.shape[0], data.shape[1], ctx_indices.shape[1], data.shape[3]))


@ctx_scatter_cb.register_fake
def _(data, batch_index, position_ids, updates):
    return torch.empty_like(data)


@ctx_gather_cb.register_fake
def _(data, batch_index, ctx_indices):
    return data.new_empty((ctx_indices.shape[0], data.shape[1], ctx_indices.shape[1], data.shape[3]))


def read_indices(position_ids: torch.Tensor, ctx_len: Any) -> torch.Tensor:
    """[B, ctx]: slot c where c <= the row's last position, else 0."""
    slots = torch.arange(ctx_len, device=position_ids.device)[None, :]
    return torch.where(slots <= position_ids.max(dim=1, keepdim=True).values, slots, 0)


def functions(opset: int) -> dict[str, Any]:
    """The onnxscript functions over the model's ``opset``, by op (``ctx_scatter`` -> CtxScatter, ...)."""
    op = getattr(onnxscript, f"opset{opset}")
    cloud = onnxscript.values.Opset(DOMAIN, 1)

    @onnxscript.script(cloud, default_opset=op)
    def CtxScatter(data: FLOAT, position_ids: INT64, updates: FLOAT) -> FLOAT:  # noqa: N802 - the compiler's name
        shape = op.Shape(updates)  # [B, H, S, D]
        grid = op.Concat(op.Slice(shape, [0], [3]), [1], axis=0)  # [B, H, S, 1]
        heads = op.Range(0, op.Squeeze(op.Slice(shape, [1], [2]), [0]), 1)
        b_idx = op.Expand(op.Unsqueeze(op.Range(0, op.Squeeze(op.Slice(shape, [0], [1]), [0]), 1), [1, 2, 3]), grid)
        h_idx = op.Expand(op.Unsqueeze(heads, [0, 2, 3]), grid)
        c_idx = op.Expand(op.Unsqueeze(position_ids, [1, 3]), grid)
        return op.ScatterND(data, op.Concat(b_idx, h_idx, c_idx, axis=3), updates)

    @onnxscript.script(cloud, default_opset=op)
    def CtxGather(data: FLOAT, ctx_indices: INT64) -> FLOAT:  # noqa: N802
        grid = op.Concat(op.Slice(op.Shape(ctx_indices), [0], [1]), op.Slice(op.Shape(data), [1], [2]),
                         op.Slice(op.Shape(ctx_indices), [1], [2]), [1], axis=0)  # [B, H, C, 1]
        b_idx = op.Expand(op.Unsqueeze(op.Range(0, op.Squeeze(op.Slice(grid, [0], [1]), [0]), 1), [1, 2, 3]), grid)
        h_idx = op.Expand(op.Unsqueeze(op.Range(0, op.Squeeze(op.Slice(grid, [1], [2]), [0]), 1), [0, 2, 3]), grid)
        c_idx = op.Expand(op.Unsqueeze(ctx_indices, [1, 3]), grid)
        return op.GatherND(data, op.Concat(b_idx, h_idx, c_idx, axis=3))

    @onnxscript.script(cloud, default_opset=op)
    def CtxScatterCB(data: FLOAT, batch_index: INT64, position_ids: INT64, updates: FLOAT) -> FLOAT:  # noqa: N802
        shape = op.Shape(updates)
        grid = op.Concat(op.Slice(shape, [0], [3]), [1], axis=0)
        b_idx = op.Expand(op.Unsqueeze(batch_index, [2, 3]), grid)
        h_idx = op.Expand(op.Unsqueeze(op.Range(0, op.Squeeze(op.Slice(shape, [1], [2]), [0]), 1), [0, 2, 3]), grid)
        c_idx = op.Expand(op.Unsqueeze(position_ids, [1, 3]), grid)
        return op.ScatterND(data, op.Concat(b_idx, h_idx, c_idx, axis=3), updates)

    @onnxscript.script(cloud, default_opset=op)
    def CtxGatherCB(data: FLOAT, batch_index: INT64, ctx_indices: INT64) -> FLOAT:  # noqa: N802
        grid = op.Concat(op.Slice(op.Shape(ctx_indices), [0], [1]), op.Slice(op.Shape(data), [1], [2]),
                         op.Slice(op.Shape(ctx_indices), [1], [2]), [1], axis=0)
        b_idx = op.Expand(op.Unsqueeze(batch_index, [2, 3]), grid)
        h_idx = op.Expand(op.Unsqueeze(op.Range(0, op.Squeeze(op.Slice(grid, [1], [2]), [0]), 1), [0, 2, 3]), grid)
        c_idx = op.Expand(op.Unsqueeze(ctx_indices, [1, 3]), grid)
        return op.GatherND(data, op.Concat(b_idx, h_idx, c_idx, axis=3))

    return {"ctx_scatter": CtxScatter, "ctx_gather": CtxGather, "ctx_scatter_cb": CtxScatterCB,
            "ctx_gather_cb": CtxGatherCB}


def register_exporters(opset: int) -> dict[Any, Any]:
    """Register the TorchScript symbolics (each op one call of its model-local function); return
    the dynamo exporter's translation table, whose entries emit each op as one node of the
    compiler's name. That exporter inlines every function (its version converter does), so its
    graph holds the nodes without their definitions, which ``attach_functions`` adds after."""
    table = {}
    for name, fn in functions(opset).items():
        def symbolic(g: Any, *args: Any, _fn: Any = fn) -> Any:
            out = g.onnxscript_op(_fn, *args)
            return out.setType(args[0].type().with_sizes([None] * 4))  # a gather's batch is the indices'

        torch.onnx.register_custom_op_symbolic(f"ai100pipeline::{name}", symbolic, 1)
    for name, fn in _calls(opset).items():
        table[getattr(torch.ops.ai100pipeline, name).default] = fn
    return table


def _calls(opset: int) -> dict[str, Any]:
    """One-node onnxscript functions, each calling an op of ``functions`` by name."""
    op = getattr(onnxscript, f"opset{opset}")
    cloud = onnxscript.values.Opset(DOMAIN, 1)

    @onnxscript.script(default_opset=op)
    def ctx_scatter(data: FLOAT, position_ids: INT64, updates: FLOAT) -> FLOAT:
        return cloud.CtxScatter(data, position_ids, updates)

    @onnxscript.script(default_opset=op)
    def ctx_gather(data: FLOAT, ctx_indices: INT64) -> FLOAT:
        return cloud.CtxGather(data, ctx_indices)

    @onnxscript.script(default_opset=op)
    def ctx_scatter_cb(data: FLOAT, batch_index: INT64, position_ids: INT64, updates: FLOAT) -> FLOAT:
        return cloud.CtxScatterCB(data, batch_index, position_ids, updates)

    @onnxscript.script(default_opset=op)
    def ctx_gather_cb(data: FLOAT, batch_index: INT64, ctx_indices: INT64) -> FLOAT:
        return cloud.CtxGatherCB(data, batch_index, ctx_indices)

    return {"ctx_scatter": ctx_scatter, "ctx_gather": ctx_gather, "ctx_scatter_cb": ctx_scatter_cb,
            "ctx_gather_cb": ctx_gather_cb}


def attach_functions(model: Any, opset: int) -> list[str]:
    """Add to the onnx_ir ``model`` the definition of every op of ``functions`` its graph calls
    without one (the dynamo exporter's graph); the names added."""
    import onnx_ir as ir

    called = {node.op_type for node in model.graph.all_nodes() if node.domain == DOMAIN}
    added = []
    for fn in functions(opset).values():
        key = (DOMAIN, fn.name, "")
        if fn.name in called and key not in model.functions:
            model.functions[key] = ir.serde.deserialize_function(fn.to_function_proto())
            added.append(fn.name)
    if added:
        model.opset_imports.setdefault(DOMAIN, 1)
    return added
