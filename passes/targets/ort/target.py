"""The cpu target: ONNX Runtime on the host CPU. Its hw schema, and what it chooses per model (``hw.attention=auto``).

Its packages run where they are built (its session is runtime.sessions.ort.OrtSession), in
fp32: validation runs the package itself and gates its logits; a package whose MatMul weights
the quantize stage made int8 / int4 is lossy: its numerics say so and the teacher-forced gate
judges it.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Mapping

from passes.lib.transformers_source import attention_support
from pipeline.pass_api import HwSchema, Numerics, Target, config_schema


class Attention(StrEnum):
    scatter = "scatter"  # the AI 100 graph run by ONNX Runtime (the whole cache through every step)
    gqa = "gqa"          # ONNX Runtime's GroupQueryAttention writing the KV cache in place
    auto = "auto"        # gqa where the family takes transformers' attention interface, else scatter


@config_schema("hw")
@dataclass
class OrtHw(HwSchema):
    """hw.* of the cpu target: ONNX Runtime on the host. No AI 100 key exists here."""

    target: str = "cpu"  # the target's name
    compile_pass: str = "compile_ort"   # the pass that builds the program for this target
    num_cores: int = 2                  # intra-op threads of the package's sessions
    attention: Attention = Attention.auto  # gqa (GroupQueryAttention, KV cache in place) | scatter (the AI 100 graph) | auto (gqa where the family takes transformers' attention interface)


class CpuTarget(Target):
    hw_schema = OrtHw
    title = "CPU"

    def choose(self, hw: Mapping[str, Any], facts: Any) -> dict[str, tuple[Any, str]]:
        """``hw.attention=auto``: GroupQueryAttention where the family takes transformers' attention
        interface (read from transformers' source, cheaply), the scatter graph elsewhere."""
        if hw.get("attention") != Attention.auto:
            return {}
        model_type = getattr(facts, "model_type", None)
        takes, why = attention_support(model_type)
        return {"attention": (Attention.gqa.value if takes else Attention.scatter.value, why)}

    def numerics(self, build: Mapping[str, Any]) -> Numerics | None:
        """fp32 unless the quantize stage stored the MatMul weights as int8 / int4 (``build.quantize.weights``)."""
        quantize = build.get("quantize") or {}
        weights = quantize.get("weights") or (quantize.get("checkpoint") or {}).get("weights")  # a quantized checkpoint's
        return Numerics(matmul_weights=str(weights)) if weights else None
