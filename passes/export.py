"""Pass `export`: the static-KV module to ONNX (model.onnx + external weights + io.json, its IO signature).

The export names the graph's inputs and outputs (the AI 100 convention) and gives each its
role in the signature; every later reader goes by role.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from passes.targets.shapes import CompileShapes
from passes.transforms.lora import input_names as lora_names
from passes.transforms.static_kv import SCATTER
from pipeline.pass_api import Needs, UserError, cfg_field, config_schema, hook, register_pass
from runtime import package_format as fmt
from runtime.package_format import KV_KINDS

# Tracing shapes: fixed, so the graph depends only on the model and the params. Distinct
# odd sizes keep the tracer from confusing one axis with another; batch > 1 keeps dynamo
# from specializing it to 1. Graph variants: a KV batch (full_batch_size) unlike the input
# batch, and a num_logits_to_keep below EXAMPLE_SEQ.
EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_CTX = 2, 3, 37
EXAMPLE_FULL_BATCH, EXAMPLE_LOGITS_TO_KEEP = 4, 2


@config_schema("export")
@dataclass
class ExportConfig:
    """export.*: the ONNX exporter (the decoder's, and the encoder's)."""

    dynamo: bool = False   # False: TorchScript exporter (12 s vs 64 s on SmolLM2, keeps functions)
    opset: int = 17  # 14..21; the dynamo exporter needs >= 18


@dataclass(frozen=True)
class ExportParams:
    dynamo: bool = cfg_field(ExportConfig, "dynamo")
    opset: int = cfg_field(ExportConfig, "opset")
    # Graph variants (must match the transform's): only whether each is set enters the key.
    full_batch_size: Any = cfg_field(CompileShapes, "full_batch_size", kind="flag")
    num_speculative_tokens: Any = cfg_field(CompileShapes, "num_speculative_tokens", kind="flag")
    attention: str = cfg_field("hw.attention", SCATTER)  # the target's (cpu: chosen per model); AI 100 has none


def io_names(num_layers: int, batch_index: bool = False, num_logits_to_keep: bool = False,
             proposals: bool = False, lora: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """Graph input and output names (the AI 100 retained-state convention); ``lora``: the LoRA
    weight inputs' names (after ``adapter_ids``)."""
    past = [f"past_{kv}.{i}" for i in range(num_layers) for kv in KV_KINDS]
    extra = ["batch_index"] * batch_index + ["num_logits_to_keep"] * num_logits_to_keep
    extra += ["adapter_ids", *lora] if lora else []
    return (["input_ids", "position_ids", *past, *extra],
            ["logits", *(f"{n}_RetainedState" for n in past), *["proposals"] * proposals])


def signature(num_layers: int, shapes: Mapping[str, list[Any]], dtypes: Mapping[str, str],
              dims: Mapping[str, int], batch_index: bool = False, num_logits_to_keep: bool = False,
              kv_update: str = "scatter", proposals: bool = False, lora: tuple[str, ...] = ()) -> fmt.Signature:
    """The graph's IO signature: the names io_names gives, each with its role."""
    roles = {"input_ids": fmt.TOKEN_IDS, "position_ids": fmt.POSITIONS, "batch_index": fmt.BATCH_INDEX,
             "num_logits_to_keep": fmt.LOGITS_TO_KEEP, "logits": fmt.LOGITS, "proposals": fmt.PROPOSALS,
             "adapter_ids": fmt.ADAPTER_IDS, **{name: fmt.LORA_WEIGHT for name in lora}}

    def value(name: str) -> fmt.IoValue:
        if name.startswith("past_"):
            kv, layer = name.removeprefix("past_").removesuffix("_RetainedState").split(".")
            role = fmt.RETAINED_KV if name.endswith("_RetainedState") else fmt.PAST_KV
            return fmt.IoValue(name, role, dtypes[name], tuple(shapes[name]), int(layer), kv)
        return fmt.IoValue(name, roles[name], dtypes[name], tuple(shapes[name]))

    names_in, names_out = io_names(num_layers, batch_index, num_logits_to_keep, proposals, lora)
    return fmt.Signature(tuple(map(value, names_in)), tuple(map(value, names_out)), dict(dims), kv_update)


def dynamic_axes(num_layers: int, batch_index: bool = False, num_logits_to_keep: bool = False,
                 proposals: bool = False, lora: tuple[str, ...] = ()) -> dict[str, dict[int, str]]:
    inputs, outputs = io_names(num_layers)
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch_size", 1: "seq_len"},
        "position_ids": {0: "batch_size", 1: "seq_len"},
        "logits": {0: "batch_size"},
    }
    kv_batch = "full_batch_size" if batch_index else "batch_size"
    for name in inputs[2:] + outputs[1:]:
        axes[name] = {0: kv_batch, 2: "ctx_len"}
    if batch_index:
        axes["batch_index"] = {0: "batch_size"}
    if num_logits_to_keep:
        axes["num_logits_to_keep"] = {0: "num_logits_to_keep"}
        axes["logits"] = {0: "batch_size", 1: "num_logits_to_keep"}
    if proposals:
        axes["proposals"] = {**axes["logits"]}
    if lora:
        axes["adapter_ids"] = {0: "batch_size"}
    return axes


def example_inputs(model: Any) -> tuple[Any, ...]:
    import torch

    ids = torch.arange(EXAMPLE_BATCH * EXAMPLE_SEQ, dtype=torch.int64).reshape(EXAMPLE_BATCH, EXAMPLE_SEQ) + 1
    pos = torch.arange(EXAMPLE_SEQ, dtype=torch.int64).repeat(EXAMPLE_BATCH, 1)
    pos[1, -1] = -1  # one padding slot, so no path specializes on "all valid"
    kv_batch = EXAMPLE_FULL_BATCH if model.has_batch_index else EXAMPLE_BATCH
    shape = (kv_batch, model.num_kv_heads, EXAMPLE_CTX, model.head_dim)
    past = [torch.zeros(shape, dtype=torch.float32) for _ in range(2 * model.num_layers)]
    extra = []
    if model.has_batch_index:  # distinct rows, neither 0 nor in order
        extra.append(torch.tensor([[EXAMPLE_FULL_BATCH - 1], [1]], dtype=torch.int64)[:EXAMPLE_BATCH])
    if model.has_num_logits_to_keep:
        extra.append(torch.zeros((EXAMPLE_LOGITS_TO_KEEP, 1), dtype=torch.int64))
    if model.lora_modules:  # distinct slots, neither 0 nor in order; small random weights
        extra.append(torch.tensor([[model.lora_slots - 1], [1]], dtype=torch.int64)[:EXAMPLE_BATCH])
        generator = torch.Generator().manual_seed(0)
        for _, n_in, n_out in model.lora_modules:
            for shape in ((model.lora_slots, n_in, model.lora_rank), (model.lora_slots, model.lora_rank, n_out)):
                extra.append(torch.randn(shape, generator=generator) * 0.01)
    return (ids, pos, *past, *extra)


def variants(model: Any, params: ExportParams) -> dict[str, bool]:
    """The graph's optional inputs, from the transform; the export params must agree."""
    have = {"batch_index": bool(model.has_batch_index), "num_logits_to_keep": bool(model.has_num_logits_to_keep)}
    want = {"batch_index": params.full_batch_size is not None,
            "num_logits_to_keep": params.num_speculative_tokens is not None}
    if model.attention != params.attention:
        raise RuntimeError(f"export: the transform's attention is {model.attention}, the export params ask for {params.attention}")
    if have != want:
        raise RuntimeError(f"export: the transform built inputs {have}, the export params ask for {want}")
    lora = tuple(n for path, _, _ in model.lora_modules for n in lora_names(path))
    return {**have, "proposals": bool(getattr(model, "projection_heads", 0)), "lora": lora}


@register_pass("export", params=ExportParams, deps=("torch", "onnx", "onnxscript", "onnx_ir"),
               materialize=True, needs=Needs(modules=("torch", "onnx", "onnxscript"), weight_copies=1))
def export(inputs: Mapping[str, Any], params: ExportParams, out: Path) -> dict[str, Any]:
    import onnx
    import onnx_ir as ir
    import torch

    from passes.lib import onnx_files, threads

    model = inputs["model"]
    args = example_inputs(model)
    extra = variants(model, params)
    names_in, names_out = io_names(model.num_layers, **extra)
    axes = dynamic_axes(model.num_layers, **extra)
    if model.attention == "gqa":  # ONNX Runtime's GroupQueryAttention (com.microsoft)
        from passes.transforms import gqa as ops
    else:  # the AI 100 KV ops (com.qualcomm.cloud), as model-local functions
        from passes.transforms import ctx_ops as ops
    custom = {"table": ops.register_exporters(params.opset), "opsets": {ops.DOMAIN: 1}}
    with tempfile.TemporaryDirectory(prefix="export-") as tmp, torch.no_grad(), threads.pinned():
        raw = Path(tmp) / "raw.onnx"
        if params.dynamo:
            _export_dynamo(model, args, raw, names_in, names_out, params.opset, custom.get("table"), **extra)
        else:  # the graph alone: the weights are attached from the module (passes/lib/weights.py)
            torch.onnx.export(
                model, args, str(raw), dynamo=False, input_names=names_in, output_names=names_out,
                dynamic_axes=axes, opset_version=params.opset, do_constant_folding=False, export_params=False,
                custom_opsets=custom.get("opsets"),
            )
        proto = onnx.load(str(raw))
    _strip_nondeterminism(proto)
    ir_model = ir.from_proto(proto)
    if params.dynamo and model.attention != "gqa":
        ops.attach_functions(ir_model, params.opset)
    if not params.dynamo:
        from passes.lib import weights

        weights.attach(ir_model, model)
        weights.fold_transposes(ir_model)
    dims = {k: int(getattr(model, k)) for k in ("num_layers", "num_kv_heads", "head_dim", "vocab_size")}
    if extra["proposals"]:
        dims["projection_heads"] = int(model.projection_heads)
    if extra["lora"]:
        dims.update(lora_rank=int(model.lora_rank), lora_slots=int(model.lora_slots))
    _name_shapes(ir_model.graph, dims, **extra)
    opset = ir_model.opset_imports.get("", None)
    if opset != params.opset:
        raise RuntimeError(f"export: asked for opset {params.opset}, the exporter produced {opset}")
    onnx_files.save_ir(ir_model, out)
    shapes, dtypes = onnx_files.io_shapes(ir_model)
    kv_update = fmt.KV_IN_PLACE if model.attention == "gqa" else fmt.KV_SCATTER
    fmt.write_signature(out, signature(model.num_layers, shapes, dtypes, dims, kv_update=kv_update, **extra))
    return {"nodes": len(proto.graph.node), "exporter": "dynamo" if params.dynamo else "torchscript"}


@hook("export", "resolve")
def resolve(params: ExportParams) -> ExportParams:
    from passes.transforms.static_kv import without_unused_variants

    return without_unused_variants(params)


@hook("export", "check")
def check(params: ExportParams, facts: Any = None) -> None:
    if params.opset not in range(14, 22):
        raise UserError(f"export.opset: {params.opset!r} is not allowed; allowed: 14..21")
    if params.dynamo and params.opset < 18:
        raise UserError(f"export.opset: {params.opset} is not allowed with export.dynamo=true; "
                        "allowed: 18..21 (the dynamo exporter emits opset 18 and cannot convert down)")


def _export_dynamo(model: Any, args: tuple, path: Path, names_in: list[str], names_out: list[str], opset: int,
                   table: Any = None, batch_index: bool = False, num_logits_to_keep: bool = False,
                   proposals: bool = False, lora: tuple[str, ...] = ()) -> None:
    import torch
    from torch.export import Dim

    batch, seq, ctx = Dim("batch_size", min=1), Dim("seq_len", min=1), Dim("ctx_len", min=2)
    kv = {0: Dim("full_batch_size", min=1) if batch_index else batch, 2: ctx}
    n_past = 2 * model.num_layers
    extra = ([{0: batch}] if batch_index else []) + ([{0: Dim("num_logits_to_keep", min=1)}] if num_logits_to_keep else [])
    extra += [{0: batch}, *[None] * len(lora)] if lora else []  # adapter_ids, then the static LoRA weights
    shapes = {"input_ids": {0: batch, 1: seq}, "position_ids": {0: batch, 1: seq},
              "past": tuple([kv] * n_past + extra)}
    try:
        program = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=shapes, input_names=names_in,
                                    output_names=names_out, opset_version=opset, optimize=False,
                                    verbose=False, custom_translation_table=table)
    except Exception as e:  # the dynamo exporter's errors are long; keep the head
        raise RuntimeError(f"export.dynamo=true failed: {type(e).__name__}: {str(e)[:2000]}") from e
    program.save(str(path), external_data=True)


def _name_shapes(graph: Any, dims: dict[str, int], batch_index: bool = False, num_logits_to_keep: bool = False,
                 proposals: bool = False, lora: tuple[str, ...] = ()) -> None:
    """Give every graph input and output its declared shape (exporters invent names for some axes)."""
    import onnx_ir as ir

    kv = ["full_batch_size" if batch_index else "batch_size", dims["num_kv_heads"], "ctx_len", dims["head_dim"]]
    kept = "num_logits_to_keep" if num_logits_to_keep else 1
    shapes = {"input_ids": ["batch_size", "seq_len"], "position_ids": ["batch_size", "seq_len"],
              "logits": ["batch_size", kept, dims["vocab_size"]],
              "proposals": ["batch_size", kept, dims.get("projection_heads", 0)],
              "batch_index": ["batch_size", 1], "num_logits_to_keep": ["num_logits_to_keep", 1],
              "adapter_ids": ["batch_size", 1]}
    for value in (*graph.inputs, *graph.outputs):
        if value.name in lora:  # static: [slots, in, rank] or [slots, rank, out], as exported
            continue
        value.shape = ir.Shape(shapes.get(value.name, kv))


def _strip_nondeterminism(proto: Any) -> None:
    """Drop text that can differ between identical exports (source locations, stack traces)."""
    for node in proto.graph.node:
        node.doc_string = ""
    for fn in proto.functions:
        for node in fn.node:
            node.doc_string = ""
    proto.graph.doc_string = ""
