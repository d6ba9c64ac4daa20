"""Named graph rewrites: each takes and returns an onnx_ir model; the pass applies them in order."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Rewrite:
    name: str
    doc: str
    apply: Callable[[Any], Any]


RULES: dict[str, Rewrite] = {}


def rewrite(name: str, doc: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    def decorate(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        RULES[name] = Rewrite(name, doc, fn)
        return fn

    return decorate


# onnxscript 0.7.2's SlicesSplit is a two-output pattern whose matcher indexes the whole graph
# for every node it tries: quadratic, 57 s per sweep on SmolLM2's TorchScript export (8.8k nodes).
QUADRATIC_RULES = frozenset({"SlicesSplit"})


@rewrite("optimize", "onnxscript optimizer: constant folding, its default rules, dead code removal; functions kept")
def optimize(model: Any) -> Any:
    import onnxscript.optimizer
    from onnxscript import rewriter

    every_rule = rewriter._DEFAULT_REWRITE_RULES  # read by the optimizer at call time
    rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in every_rule if r.name not in QUADRATIC_RULES)
    try:
        return onnxscript.optimizer.optimize(model, inline=False)
    finally:
        rewriter._DEFAULT_REWRITE_RULES = every_rule


@rewrite("basic", "onnxscript's default pattern rules (no-op removal, slice/reshape/cast simplifications)")
def basic(model: Any) -> Any:
    from onnxscript import rewriter

    return rewriter.rewrite(model, [r for r in rewriter._DEFAULT_REWRITE_RULES if r.name not in QUADRATIC_RULES])


@rewrite("rms_norm", "RMSNorm subgraphs -> CustomRMSNorm (AI 100 custom op), carried as a model-local function")
def rms_norm(model: Any) -> Any:
    from passes.rewrites import rms_norm as rule

    return rule.apply(model)


@rewrite("fp16_clip", "fp32 constants clipped to the fp16 finite range [-65504, 65504] (+-inf, NaN kept), for fp16 targets")
def fp16_clip(model: Any) -> Any:
    from passes.rewrites.fp16_clip import clip_fp16

    clip_fp16(model)
    return model
