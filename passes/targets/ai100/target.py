"""The ai100 target: Qualcomm Cloud AI 100. Its hw schema, and what the house asks of it.

Its packages hold a QPC (``qpc/``, compiled by compile.py) and, beside it, the exact ONNX
handed to the compiler: where the Platform SDK's runtime (qaicrt) is importable its session
(runtime.sessions.ai100) runs the QPC on the device, in the card's fp16 numerics; elsewhere
validation runs that ONNX with ONNX Runtime. A package also carries qconfig.json, as users of
the reference library expect.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from passes.targets.ai100.sdk import qaicrt_present
from pipeline.pass_api import HwSchema, Numerics, Target, config_schema


class KvCacheDtype(StrEnum):
    float16 = "float16"
    mxint8 = "mxint8"
    bfloat16 = "bfloat16"


class SpecializationFormat(StrEnum):
    flat = "flat"    # [{"batch_size": "1", ...}]: every SDK reads it
    named = "named"  # [{"name": "Prefill", "symbols": {...}}]: newer SDKs


@config_schema("hw")
@dataclass
class Ai100Hw(HwSchema):
    """hw.* of the ai100 target (conf/hw/ai100_*.yaml)."""

    target: str = "ai100"  # the target's name
    compile_pass: str = "compile_ai100"  # the pass that builds the program for this target
    num_cores: int = 16                    # cores per device
    num_devices: int = 1                   # > 1: tensor slicing (mdp_ts_<N>.json)
    compiler: Optional[str] = None         # path; null: qaic-compile, then qaic-exec, in /opt/qti-aic/exec
    hw_version: str = "ai100"              # -aic-hw-version
    mxfp6_matmul: bool = True  # compiler option: MXFP6 matmul weights
    kv_cache_dtype: KvCacheDtype = KvCacheDtype.float16  # KV precision in custom_io.yaml
    # Node outputs computed in fp32 under -convert-to-fp16 (-node-precision-info): none, a list of
    # names, or a YAML file with an FP32NodeInstanceNames list (the reference library's form).
    fp32_nodes: Any = "none"
    mos: Optional[int] = None  # compiler option -mos
    ols: Optional[int] = None  # compiler option -ols
    aic_enable_depth_first: bool = False  # compiler option -aic-enable-depth-first
    specialization_format: SpecializationFormat = SpecializationFormat.flat  # flat | named (some older SDKs reject named)
    extra_options: Dict[str, Any] = field(default_factory=dict)  # some_option: True -> -some-option
    compile_timeout_s: Optional[float] = None  # none: real compiles take hours


class Ai100Target(Target):
    hw_schema = Ai100Hw
    title = "AI 100"
    runtime = "qaicrt"
    label = "qpc"
    lossless = False  # the card computes in fp16 (and MXFP6 weights): tokens are compared, not logits

    def device_present(self) -> bool:
        return qaicrt_present()

    def absent_reason(self) -> str:
        return "no Cloud AI 100 runtime (qaicrt) on this machine"

    def runnable(self, package: Path, program: Any) -> str | None:
        if super().runnable(package, program) is None:
            return None
        return ("compile.dry_run: True is not allowed for inference; allowed: false (a package with a "
                "compiled qpc/programqpc.bin)")

    def package_files(self, out: Path, checkpoint: Path, program: Any, config: Mapping[str, Any]) -> None:
        from passes.targets.ai100.package import write_qconfig

        write_qconfig(out, checkpoint, program, config["rewrite"]["rules"])

    def numerics(self, build: Mapping[str, Any]) -> Numerics:
        """-convert-to-fp16 always; MXFP6 MatMul weights with hw.mxfp6_matmul; the KV cache's
        custom IO precision; the node outputs of hw.fp32_nodes (resolved to names by compile)."""
        hw = build.get("hw", {})
        names = hw.get("fp32_nodes") or []
        return Numerics(activations="float16", matmul_weights="mxfp6" if hw.get("mxfp6_matmul") else "float16",
                        kv_cache=str(hw.get("kv_cache_dtype", "float16")),
                        fp32_nodes=tuple(names) if isinstance(names, (list, tuple)) else ())

    def provenance(self, program: Any, versions: Mapping[str, str]) -> dict[str, Any]:
        hw = program.build.get("hw", {})
        return {"kind": hw.get("compiler_kind"), "version": hw.get("compiler_version")}
