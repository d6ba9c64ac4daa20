"""Pass `compile_qnn`: the rewritten ONNX compiled by QNN for HTP, one context binary per specialization.

Input ``onnx``: the rewrite stage's tree (the AI 100 graph: conf/hw/qnn_htp.yaml keeps its
rules). Output:

```
model.onnx + model.onnx.data   the ONNX view: the input with the target's rules (rules.py) applied,
                               shapes still symbolic; ONNX Runtime runs it where QNN is absent
io.json                        the graph's IO signature
qnn/<Name>.onnx                one EPContext model per specialization (Prefill, Decode): the graph
qnn/<Name>_qnn.bin             with static_shapes of that specialization, compiled by the QNN EP into a
                               QNN context binary (its weights inside), which the session loads
qnn.json                       the QNN SDK and onnxruntime-qnn versions, provider options, seconds per graph
program.json                   the program: binary qnn/, the ONNX view as its graphs
```

Every graph is compiled with CPU fallback disabled: a node QNN does not take stops the build
with an error naming it (runtime.qnn_ep.QnnRefused). The key holds the onnxruntime-qnn version
(deps), the QNN SDK version it bundles (resolve hook) and the hw options.

Weights are not shared between the prefill and decode binaries: onnxruntime-qnn 2.7.0 writes
them with ``ep.share_ep_contexts=1``, but opening the second one crashed here (docs/qnn.md).
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from passes.targets import specializations as spz
from passes.targets.qnn.target import RUNTIME, QnnHw
from passes.targets.shapes import ShapeParams
from pipeline.pass_api import not_allowed, Needs, UserError, cfg_field, config_of, hook, register_pass

TARGET = QnnHw.target
BINARY_DIR = "qnn"
QNN_JSON = "qnn.json"
HTP_ARCHS = (68, 69, 73, 75, 79, 81)  # the Hexagon versions QNN's HTP backend prepares for


@dataclass(frozen=True)
class CompileQnnParams(ShapeParams):
    htp_arch: int = cfg_field(QnnHw, "htp_arch")
    soc_model: int = cfg_field(QnnHw, "soc_model")
    precision: str = cfg_field(QnnHw, "precision")
    graph_finalization_optimization_mode: int = cfg_field(QnnHw, "graph_finalization_optimization_mode")
    vtcm_mb: int = cfg_field(QnnHw, "vtcm_mb")
    qnn_sdk_version: str = ""  # filled by the resolve hook (from the onnxruntime-qnn package)


def provider_options(params: CompileQnnParams) -> dict[str, str]:
    """The QNN EP's options for these params (the session uses the same, from program.json)."""
    options = {"backend_type": "htp", "htp_arch": str(params.htp_arch), "soc_model": str(params.soc_model),
               "enable_htp_fp16_precision": "1" if params.precision == "fp16" else "0",
               "htp_graph_finalization_optimization_mode": str(params.graph_finalization_optimization_mode)}
    if params.vtcm_mb:
        options["vtcm_mb"] = str(params.vtcm_mb)
    return options


@register_pass("compile_qnn", params=CompileQnnParams,
               deps=("onnx", "onnx_ir", "onnxscript", "onnxruntime", "onnxruntime_qnn"), materialize=True,
               needs=Needs(modules=("onnx", "onnx_ir", "onnxscript", "onnxruntime", "onnxruntime_qnn"), weight_copies=2))
def compile_qnn(inputs: Mapping[str, Any], params: CompileQnnParams, out: Path) -> dict[str, Any]:
    from passes.lib import onnx_files
    from passes.lib.files import link_or_copy
    from passes.targets.qnn import rules
    from runtime import package_format as fmt
    from runtime import qnn_ep

    src = Path(inputs["onnx"])
    signature, specs = spz.for_graph(src, params, "compile_qnn")
    if signature.kind != fmt.CAUSAL_LM:
        raise UserError(f"pipeline: {signature.kind!r} is not allowed with hw.target=qnn; allowed: a causal LM pipeline")
    model = onnx_files.load_ir(src)
    for rule in rules.RULES:
        model = rule.apply(model)
    onnx_files.save_ir(model, out)  # the ONNX view
    del model
    link_or_copy(src / fmt.SIGNATURE, out / fmt.SIGNATURE)

    options = provider_options(params)
    staging = out / ".static"  # each specialization's static graph, handed to QNN, then dropped
    (out / BINARY_DIR).mkdir()
    seconds = {}
    for spec in specs:
        static = rules.STATIC.apply(onnx_files.load_ir(out), spec.symbols)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        onnx_files.save_ir(static, staging)
        del static
        context = out / BINARY_DIR / f"{spec.name}.onnx"
        start = time.perf_counter()
        session = qnn_ep.open_session(staging / onnx_files.MODEL, options, {
            "ep.context_enable": "1", "ep.context_file_path": str(context), "ep.context_embed_mode": "0"})
        del session
        seconds[spec.name] = round(time.perf_counter() - start, 3)
        print(f"  qnn: {spec.name}: context binary in {seconds[spec.name]:.1f} s", flush=True)
    shutil.rmtree(staging)

    versions = {"onnxruntime_qnn_version": qnn_ep.versions()["onnxruntime_qnn"],
                "qnn_sdk_version": params.qnn_sdk_version}
    fmt.write_json(out / QNN_JSON, {**versions, "provider_options": options, "seconds": seconds,
                                     "binaries": {s.name: f"{BINARY_DIR}/{s.name}.onnx" for s in specs}})
    build = config_of(params)
    build["hw"].update(target=TARGET, **versions)
    fmt.write_program(out, fmt.Program(
        TARGET, signature, specs, graphs={s.name: onnx_files.MODEL for s in specs},
        weights=tuple(onnx_files.data_files(out)), options={"intra_op_num_threads": 0, "qnn": options},
        binary=BINARY_DIR, validation_target="onnx", build=build))
    return {"seconds": seconds, **versions, "rules": [r.name for r in rules.RULES] + [rules.STATIC.name]}


@hook("compile_qnn", "check")
def check(params: CompileQnnParams, facts: Any = None) -> None:
    """Bad hw values and a missing onnxruntime-qnn: one line each, exit 2, before anything runs."""
    if params.htp_arch not in HTP_ARCHS or not spz.is_int(params.htp_arch):
        raise not_allowed("hw.htp_arch", params.htp_arch, " | ".join(map(str, HTP_ARCHS)))
    if not spz.is_int(params.soc_model) or params.soc_model < 1:
        raise not_allowed("hw.soc_model", params.soc_model, "a QNN SoC model id >= 1 (57: SM8550)")
    if params.graph_finalization_optimization_mode not in (1, 2, 3) or not spz.is_int(params.graph_finalization_optimization_mode):
        raise not_allowed("hw.graph_finalization_optimization_mode", params.graph_finalization_optimization_mode, "1 | 2 | 3")
    if not spz.is_int(params.vtcm_mb) or params.vtcm_mb < 0:
        raise not_allowed("hw.vtcm_mb", params.vtcm_mb, "an integer >= 0 (0: the SoC's default)")
    spz.check_plan(params, facts)
    try:
        _sdk_version()
    except ImportError:
        raise UserError(f"hw.target: 'qnn' is not allowed here; allowed: with {RUNTIME} installed "
                        f"(pip install {RUNTIME}), or another hw preset") from None


@hook("compile_qnn", "resolve")
def resolve(params: CompileQnnParams) -> CompileQnnParams:
    """The QNN SDK version onnxruntime-qnn bundles (it enters the key)."""
    return dataclasses.replace(params, qnn_sdk_version=_sdk_version())


def _sdk_version() -> str:
    from runtime import qnn_ep

    return qnn_ep.versions()["qnn_sdk"]
