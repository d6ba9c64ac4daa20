"""Pass `compile_ort`: fixed-shape ONNX Runtime graphs per specialization, sharing one weights file."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from passes import specializations as spz
from pipeline.pass_api import Needs, UserError, cfg_field, hook, register_pass

SPECIALIZATIONS = "specializations.json"
SESSION = "session.json"


@dataclass(frozen=True)
class CompileOrtParams:
    num_cores: int = cfg_field("hw.num_cores", 2)
    batch_size: int = cfg_field("compile.batch_size", 1)
    prefill_seq_len: int = cfg_field("compile.prefill_seq_len", 32)
    ctx_len: int = cfg_field("compile.ctx_len", 256)
    full_batch_size: Any = cfg_field("compile.full_batch_size", None)
    num_speculative_tokens: Any = cfg_field("compile.num_speculative_tokens", None)


def specializations(params: Any) -> list[dict[str, int]]:
    """The shapes to build, planned once from the compile config (passes.specializations.plan)."""
    return spz.plan(params.batch_size, params.prefill_seq_len, params.ctx_len,
                    params.full_batch_size, params.num_speculative_tokens)


@register_pass("compile_ort", params=CompileOrtParams, deps=("onnx", "onnxruntime"), materialize=True,
               code=("passes.onnx_files", "passes.files", "passes.specializations"),
               needs=Needs(modules=("onnx", "onnxruntime")))
def compile_ort(inputs: Mapping[str, Any], params: CompileOrtParams, out: Path) -> dict[str, Any]:
    import onnx

    from passes import onnx_files
    from passes.files import link_or_copy

    src = Path(inputs["onnx"])
    io = onnx_files.read_json(src / onnx_files.IO)
    spz.check_variant_inputs(io, params.full_batch_size, params.num_speculative_tokens, "compile_ort")
    specs = specializations(params)
    weights = onnx_files.data_files(src)
    for name in weights:
        link_or_copy(src / name, out / name)
    # Initializers keep pointing at the same data files: every graph below reads one copy.
    proto = onnx.load(str(src / onnx_files.MODEL), load_external_data=False)
    graphs = []
    for spec, role in zip(specs, spz.names(specs)):
        name = f"{role.lower()}.onnx"  # prefill.onnx, decode.onnx[, decode_k<K>.onnx]
        fixed = onnx.ModelProto()
        fixed.CopyFrom(proto)
        _fix_shapes(fixed, {k: int(v) for k, v in spec.items()})
        onnx.save_model(fixed, str(out / name))
        graphs.append({"file": name, **spec})
    session = {
        "graphs": graphs,
        "weights": weights,
        "io": io,
        "options": {
            "intra_op_num_threads": params.num_cores,
            "inter_op_num_threads": 1,
            "execution_mode": "sequential",
            "graph_optimization_level": "all",
        },
    }
    onnx_files.write_json(out / SESSION, session)
    onnx_files.write_json(out / SPECIALIZATIONS, spz.to_json(specs, "flat"))
    load_seconds = _prove_loads(out, session)
    return {"graphs": [g["file"] for g in graphs], "load_seconds": load_seconds}


@hook("compile_ort", "check")
def check(params: CompileOrtParams) -> None:
    try:
        specializations(params)
    except ValueError as e:
        raise UserError(str(e)) from None


def _fix_shapes(model: Any, sizes: dict[str, int]) -> None:
    """Replace the named dynamic axes by the specialization's sizes everywhere they appear."""
    graph = model.graph
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in sizes:
                dim.dim_value = sizes[dim.dim_param]


def _prove_loads(out: Path, session: dict[str, Any]) -> dict[str, float]:
    """Create every session once: a graph ONNX Runtime cannot load must fail the build here."""
    import time

    import onnxruntime as ort

    from runtime.ort_session import session_options

    seconds = {}
    for graph in session["graphs"]:
        start = time.perf_counter()
        try:
            ort.InferenceSession(str(out / graph["file"]), session_options(session["options"]),
                                 providers=["CPUExecutionProvider"])
        except Exception as e:
            raise RuntimeError(f"compile_ort: ONNX Runtime cannot load {graph['file']} "
                               f"(batch {graph['batch_size']}, seq {graph['seq_len']}, ctx {graph['ctx_len']}): "
                               f"{type(e).__name__}: {str(e)[:1000]}") from e
        seconds[graph["file"]] = round(time.perf_counter() - start, 3)
    return seconds
