"""Pass `export`: the static-KV module to ONNX (model.onnx + external weights + io.json)."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.pass_api import Needs, UserError, cfg_field, hook, register_pass

# Tracing shapes: fixed, so the graph depends only on the model and the params. Distinct
# odd sizes keep the tracer from confusing one axis with another; batch > 1 keeps dynamo
# from specializing it to 1.
EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_CTX = 2, 3, 37


@dataclass(frozen=True)
class ExportParams:
    dynamo: bool = cfg_field("export.dynamo", False)
    opset: int = cfg_field("export.opset", 17)


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """Graph input and output names (the AI 100 retained-state convention)."""
    past = [f"past_{kv}.{i}" for i in range(num_layers) for kv in ("key", "value")]
    return ["input_ids", "position_ids", *past], ["logits", *(f"{n}_RetainedState" for n in past)]


def dynamic_axes(num_layers: int) -> dict[str, dict[int, str]]:
    inputs, outputs = io_names(num_layers)
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch_size", 1: "seq_len"},
        "position_ids": {0: "batch_size", 1: "seq_len"},
        "logits": {0: "batch_size"},
    }
    for name in inputs[2:] + outputs[1:]:
        axes[name] = {0: "batch_size", 2: "ctx_len"}
    return axes


def example_inputs(model: Any) -> tuple[Any, ...]:
    import torch

    ids = torch.arange(EXAMPLE_BATCH * EXAMPLE_SEQ, dtype=torch.int64).reshape(EXAMPLE_BATCH, EXAMPLE_SEQ) + 1
    pos = torch.arange(EXAMPLE_SEQ, dtype=torch.int64).repeat(EXAMPLE_BATCH, 1)
    pos[1, -1] = -1  # one padding slot, so no path specializes on "all valid"
    shape = (EXAMPLE_BATCH, model.num_kv_heads, EXAMPLE_CTX, model.head_dim)
    past = [torch.zeros(shape, dtype=torch.float32) for _ in range(2 * model.num_layers)]
    return (ids, pos, *past)


@register_pass("export", params=ExportParams, deps=("torch", "onnx", "onnxscript", "onnx_ir"),
               materialize=True, code=("passes.onnx_files",),
               needs=Needs(modules=("torch", "onnx", "onnxscript"), weight_copies=1))
def export(inputs: Mapping[str, Any], params: ExportParams, out: Path) -> dict[str, Any]:
    import onnx
    import onnx_ir as ir
    import torch

    from passes import onnx_files

    model = inputs["model"]
    args = example_inputs(model)
    names_in, names_out = io_names(model.num_layers)
    axes = dynamic_axes(model.num_layers)
    with tempfile.TemporaryDirectory(prefix="export-") as tmp, torch.no_grad():
        raw = Path(tmp) / "raw.onnx"
        if params.dynamo:
            _export_dynamo(model, args, raw, names_in, names_out, params.opset)
        else:
            torch.onnx.export(
                model, args, str(raw), dynamo=False, input_names=names_in, output_names=names_out,
                dynamic_axes=axes, opset_version=params.opset, do_constant_folding=True,
            )
        proto = onnx.load(str(raw))
    _strip_nondeterminism(proto)
    ir_model = ir.from_proto(proto)
    dims = {k: int(getattr(model, k)) for k in ("num_layers", "num_kv_heads", "head_dim", "vocab_size")}
    _name_shapes(ir_model.graph, dims)
    opset = ir_model.opset_imports.get("", None)
    if opset != params.opset:
        raise RuntimeError(f"export: asked for opset {params.opset}, the exporter produced {opset}")
    onnx_files.save_ir(ir_model, out)
    onnx_files.write_json(out / onnx_files.IO, onnx_files.io_spec(ir_model, dims, axes))
    return {"nodes": len(proto.graph.node), "exporter": "dynamo" if params.dynamo else "torchscript"}


@hook("export", "check")
def check(params: ExportParams) -> None:
    if params.dynamo and params.opset < 18:
        raise UserError(f"export.opset: {params.opset} is not allowed with export.dynamo=true; "
                        "allowed: 18..21 (the dynamo exporter emits opset 18 and cannot convert down)")


def _export_dynamo(model: Any, args: tuple, path: Path, names_in: list[str], names_out: list[str], opset: int) -> None:
    import torch
    from torch.export import Dim

    batch, seq, ctx = Dim("batch_size", min=1), Dim("seq_len", min=1), Dim("ctx_len", min=2)
    kv = {0: batch, 2: ctx}
    shapes = {"input_ids": {0: batch, 1: seq}, "position_ids": {0: batch, 1: seq},
              "past": tuple(kv for _ in args[2:])}
    try:
        program = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=shapes, input_names=names_in,
                                    output_names=names_out, opset_version=opset, optimize=False,
                                    verbose=False)
    except Exception as e:  # the dynamo exporter's errors are long; keep the head
        raise RuntimeError(f"export.dynamo=true failed: {type(e).__name__}: {str(e)[:2000]}") from e
    program.save(str(path), external_data=True)


def _name_shapes(graph: Any, dims: dict[str, int]) -> None:
    """Give every graph input and output its declared shape (exporters invent names for some axes)."""
    import onnx_ir as ir

    kv = ["batch_size", dims["num_kv_heads"], "ctx_len", dims["head_dim"]]
    shapes = {"input_ids": ["batch_size", "seq_len"], "position_ids": ["batch_size", "seq_len"],
              "logits": ["batch_size", 1, dims["vocab_size"]]}
    for value in (*graph.inputs, *graph.outputs):
        value.shape = ir.Shape(shapes.get(value.name, kv))


def _strip_nondeterminism(proto: Any) -> None:
    """Drop text that can differ between identical exports (source locations, stack traces)."""
    for node in proto.graph.node:
        node.doc_string = ""
    for fn in proto.functions:
        for node in fn.node:
            node.doc_string = ""
    proto.graph.doc_string = ""
