"""Pass `compile_ort`: the ONNX Runtime program for the host CPU.

For a graph that updates its KV cache in place (``hw.attention=gqa``, the default): one
dynamic ``model.onnx`` for every specialization (one session, weights pre-packed once; a
prefill runs unpadded), made cheaper per step by graph.py (no identity reshapes, fused norms,
packed q/k/v), with its own weights file. For the AI 100 convention's graph
(``hw.attention=scatter``): ``<name>.onnx`` per specialization (prefill.onnx, decode.onnx,
decode_k<K>.onnx) with fixed shapes, sharing the rewrite's weights file(s). An encoder's graph
(an embedding model): one dynamic ``model.onnx`` for every compiled length. Either way
``program.json`` (runtime.package_format.Program: the signature, the specializations with their
roles, the graph of each, the session options).
The cpu target's hw schema and plugin are in target.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from passes.targets import specializations as spz
from passes.targets.ort.target import OrtHw
from passes.targets.shapes import ShapeParams
from pipeline.pass_api import Needs, UserError, cfg_field, config_of, hook, register_pass


@dataclass(frozen=True)
class CompileOrtParams(ShapeParams):
    num_cores: int = cfg_field(OrtHw, "num_cores")


TARGET = OrtHw.target  # the program's target: its session opens the package


@register_pass("compile_ort", params=CompileOrtParams, deps=("onnx", "onnxruntime"), materialize=True,
               needs=Needs(modules=("onnx", "onnxruntime")))
def compile_ort(inputs: Mapping[str, Any], params: CompileOrtParams, out: Path) -> dict[str, Any]:
    import onnx

    from passes.lib import onnx_files
    from passes.lib.files import link_or_copy
    from runtime import package_format as fmt

    src = Path(inputs["onnx"])
    signature, specs = spz.for_graph(src, params, "compile_ort")
    graphs: dict[str, str] = {}
    result: dict[str, Any] = {}
    if signature.kind == fmt.EMBEDDING or signature.kv_update == fmt.KV_IN_PLACE:
        # One dynamic graph, one session: the weights pre-packed once for every specialization; a
        # step runs unpadded up to its shape (a prefill any length, an encoder's batch its longest text).
        model = onnx_files.load_ir(src)
        if signature.kind == fmt.CAUSAL_LM:  # a decoder's step made cheaper (graph.py)
            from passes.targets.ort import graph, tied

            shapes = graph.symbolic_shapes(src / onnx_files.MODEL)
            result = {"identity_reshapes_dropped": graph.drop_identity_reshapes(model, shapes)}
            model, result["skip_norms_fused"] = graph.fuse_norms(model)
            result["qkv_packed"] = graph.pack_qkv(model)
            result["heads_tied"] = tied.tie_head(model)
        else:  # an encoder's Linear layers: the bias inside the GEMM
            from passes.targets.ort import graph

            model, result["bias_gemms"] = graph.bias_gemms(model)
        onnx_files.save_ir(model, out)
        result["nodes"] = sum(1 for _ in model.graph)
        del model
        weights = onnx_files.data_files(out)
        graphs = {spec.name: onnx_files.MODEL for spec in specs}
        # every shape an upper bound: a prefill runs unpadded, a speculative step scores only the tokens it has
        specs = tuple(dataclasses.replace(spec, upper_bound=True) for spec in specs)
    else:  # one fixed-shape graph per specialization; initializers keep pointing at the same data files
        weights = onnx_files.data_files(src)
        for name in weights:
            link_or_copy(src / name, out / name)
        proto = onnx.load(str(src / onnx_files.MODEL), load_external_data=False)
        for spec in specs:
            graphs[spec.name] = f"{spec.name.lower()}.onnx"  # prefill.onnx, decode.onnx[, decode_k<K>.onnx]
            fixed = onnx.ModelProto()
            fixed.CopyFrom(proto)
            _fix_shapes(fixed, dict(spec.symbols))
            onnx.save_model(fixed, str(out / graphs[spec.name]))
    options = {"intra_op_num_threads": params.num_cores, "inter_op_num_threads": 1,
               "execution_mode": "sequential", "graph_optimization_level": "all"}
    build = config_of(params)
    build["hw"]["target"] = TARGET
    program = fmt.Program(TARGET, signature, specs, graphs, tuple(weights), options, build=build)
    fmt.write_program(out, program)
    load_seconds = prove_loads(out, program)
    return {**result, "graphs": sorted(set(graphs.values())), "load_seconds": load_seconds}


@hook("compile_ort", "check")
def check(params: CompileOrtParams, facts: Any = None) -> None:
    if not isinstance(params.num_cores, int) or not 1 <= params.num_cores <= 4096:
        raise UserError(f"hw.num_cores: {params.num_cores!r} is not allowed; allowed: an integer >= 1")
    spz.check_plan(params, facts)


def _fix_shapes(model: Any, sizes: dict[str, int]) -> None:
    """Replace the named dynamic axes by the specialization's sizes everywhere they appear."""
    graph = model.graph
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in sizes:
                dim.dim_value = sizes[dim.dim_param]


def prove_loads(out: Path, program: Any) -> dict[str, float]:
    """Create every session once: a graph ONNX Runtime cannot load must fail the build here."""
    import time

    import onnxruntime as ort

    from runtime.sessions.ort import session_options

    seconds = {}
    for spec in program.specializations:
        file = program.graphs[spec.name]
        if file in seconds:
            continue
        start = time.perf_counter()
        try:
            ort.InferenceSession(str(out / file), session_options(program.options), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise RuntimeError(f"compile_ort: ONNX Runtime cannot load {file} "
                               f"({', '.join(f'{k} {v}' for k, v in spec.symbols.items())}): "
                               f"{type(e).__name__}: {str(e)[:1000]}") from e
        seconds[file] = round(time.perf_counter() - start, 3)
    return seconds
