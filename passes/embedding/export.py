"""Pass `export_encoder`: the embedding module to ONNX (model.onnx + external weights + io.json).

Inputs ``input_ids`` and ``attention_mask`` [batch_size, seq_len] (int64), output
``sentence_embedding`` [batch_size, hidden]; both axes dynamic, so one graph serves every
compiled length. Either exporter (``export.dynamo``); the TorchScript one exports the graph
alone and the weights are attached as views of the module's tensors (passes/lib/weights.py).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from passes.export import ExportConfig
from pipeline.pass_api import Needs, cfg_field, hook, register_pass
from runtime import package_format as fmt

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "sentence_embedding"


@dataclass(frozen=True)
class ExportEncoderParams:
    dynamo: bool = cfg_field(ExportConfig, "dynamo")
    opset: int = cfg_field(ExportConfig, "opset")


def signature(hidden: int) -> fmt.Signature:
    axes = ("batch_size", "seq_len")
    return fmt.Signature(
        (fmt.IoValue("input_ids", fmt.TOKEN_IDS, "int64", axes),
         fmt.IoValue("attention_mask", fmt.ATTENTION_MASK, "int64", axes)),
        (fmt.IoValue(OUTPUT, fmt.POOLED_OUTPUT, "float32", ("batch_size", hidden)),),
        {"hidden_size": hidden})


def example_inputs() -> tuple[Any, Any]:
    """Two rows of 7 tokens, the second padded after 4 (batch > 1 keeps dynamo from specializing it)."""
    import torch

    ids = torch.arange(101, 115, dtype=torch.int64).reshape(2, 7)
    mask = torch.ones(2, 7, dtype=torch.int64)
    mask[1, 4:] = 0
    return ids, mask


@register_pass("export_encoder", params=ExportEncoderParams, deps=("torch", "onnx", "onnxscript", "onnx_ir"),
               materialize=True, needs=Needs(modules=("torch", "onnx", "onnxscript"), weight_copies=1))
def export_encoder(inputs: Mapping[str, Any], params: ExportEncoderParams, out: Path) -> dict[str, Any]:
    import onnx
    import onnx_ir as ir
    import torch

    from passes.export import _strip_nondeterminism
    from passes.lib import onnx_files, threads, weights

    model = inputs["model"]
    args = example_inputs()
    with tempfile.TemporaryDirectory(prefix="export-") as tmp, torch.no_grad(), threads.pinned():
        raw = Path(tmp) / "raw.onnx"
        if params.dynamo:
            from torch.export import Dim

            axes = {0: Dim("batch_size", min=1), 1: Dim("seq_len", min=1)}
            try:
                program = torch.onnx.export(model, args, dynamo=True, dynamic_shapes={"input_ids": axes, "attention_mask": axes},
                                            input_names=list(INPUTS), output_names=[OUTPUT], opset_version=params.opset,
                                            optimize=False, verbose=False)
            except Exception as e:  # the dynamo exporter's errors are long; keep the head
                raise RuntimeError(f"export.dynamo=true failed: {type(e).__name__}: {str(e)[:2000]}") from e
            program.save(str(raw), external_data=True)
        else:
            axes = {0: "batch_size", 1: "seq_len"}
            torch.onnx.export(model, args, str(raw), dynamo=False, input_names=list(INPUTS), output_names=[OUTPUT],
                              dynamic_axes={"input_ids": axes, "attention_mask": axes, OUTPUT: {0: "batch_size"}},
                              opset_version=params.opset, do_constant_folding=False, export_params=False)
        proto = onnx.load(str(raw))
    _strip_nondeterminism(proto)
    ir_model = ir.from_proto(proto)
    if not params.dynamo:
        weights.attach(ir_model, model)
        weights.fold_transposes(ir_model)
    sig = signature(model.hidden_size)
    for value in (*ir_model.graph.inputs, *ir_model.graph.outputs):
        value.shape = ir.Shape(next(v.shape for v in (*sig.inputs, *sig.outputs) if v.name == value.name))
    onnx_files.save_ir(ir_model, out)
    fmt.write_signature(out, sig)
    return {"nodes": len(proto.graph.node), "exporter": "dynamo" if params.dynamo else "torchscript",
            "pooling": model.pooling, "normalize": model.normalize}


def _check(params: ExportEncoderParams, facts: Any = None) -> None:
    from passes.export import check

    check(params, facts)  # the same opsets as the decoder export's


hook("export_encoder", "check")(_check)
