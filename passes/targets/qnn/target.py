"""The qnn target: a QNN HTP context binary per compiled shape, run by onnxruntime-qnn's QNN execution provider.

Its packages hold the QNN context (``qnn/``: one EPContext model and its context binary per
specialization, written by compile.py) and, beside it, the ONNX view: the graph with the
target's rules applied (rules.py), before its shapes were fixed. Where onnxruntime-qnn is
installed (it bundles the HTP backend, which runs as a simulator on x86) the session
(runtime.sessions.qnn) runs the context binary with CPU fallback disabled; elsewhere validation
runs the ONNX view and its fp16 twin with ONNX Runtime.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Mapping

from pipeline.pass_api import HwSchema, Numerics, Target, config_schema

RUNTIME = "onnxruntime-qnn"


class Precision(StrEnum):
    fp16 = "fp16"  # float graphs computed in fp16 on HTP (enable_htp_fp16_precision); quantized (QDQ) programs are not built


@config_schema("hw")
@dataclass
class QnnHw(HwSchema):
    """hw.* of the qnn target (conf/hw/qnn_htp.yaml): the HTP it compiles for."""

    target: str = "qnn"  # the target's name
    compile_pass: str = "compile_qnn"  # the pass that builds the program for this target
    backend: str = "htp"  # QNN backend (backend_type); onnxruntime-qnn bundles HTP (and GPU), not the QNN CPU backend
    htp_arch: int = 73  # Hexagon architecture version (v73: Snapdragon 8 Gen 2 class)
    soc_model: int = 57  # QNN SoC model id (57: SM8550); fp16 precision needs it
    precision: Precision = Precision.fp16  # what float graphs compute in
    graph_finalization_optimization_mode: int = 3  # QNN graph optimization level 1..3 (3: slowest compile, fastest graph)
    vtcm_mb: int = 0  # VTCM to use, in MB; 0: the SoC's default


class QnnTarget(Target):
    hw_schema = QnnHw
    title = "QNN HTP"
    runtime = RUNTIME
    label = "qnn-htp"
    lossless = False  # HTP computes the float graph in fp16: tokens and the teacher-forced gate, not fp32 logits

    def device_present(self) -> bool:
        return importlib.util.find_spec("onnxruntime_qnn") is not None

    def absent_reason(self) -> str:
        return "no QNN execution provider (onnxruntime-qnn) on this machine"

    def numerics(self, build: Mapping[str, Any]) -> Numerics:
        """fp16 activations, weights and KV cache (hw.precision=fp16)."""
        return Numerics(activations="float16", matmul_weights="float16", kv_cache="float16")

    def provenance(self, program: Any, versions: Mapping[str, str]) -> dict[str, Any]:
        hw = program.build.get("hw", {})
        return {"kind": "qnn", "version": hw.get("qnn_sdk_version"), "onnxruntime_qnn": hw.get("onnxruntime_qnn_version")}
