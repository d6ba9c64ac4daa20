"""Pass `rewrite`: apply named ONNX graph rewrites (rewrite.rules, in order) to an exported model."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, List, Mapping

from passes.rewrites.rules import RULES
from pipeline.pass_api import Needs, UserError, cfg_field, config_schema, hook, register_pass

Rule = StrEnum("Rule", {name: name for name in RULES})  # the named rewrites (rules.py)


@config_schema("rewrite")
@dataclass
class RewriteConfig:
    """rewrite.*: the graph rewrites applied to the export, in order (the AI 100 presets add rms_norm)."""

    rules: List[Rule] = field(default_factory=lambda: [Rule.optimize])  # onnxscript rewrites applied in order: optimize, basic, rms_norm (CustomRMSNorm, the AI 100 custom op), fp16_clip


@dataclass(frozen=True)
class RewriteParams:
    rules: tuple[str, ...] = cfg_field(RewriteConfig, "rules")


@register_pass("rewrite", params=RewriteParams, deps=("onnx", "onnxscript", "onnx_ir"), materialize=True,
               needs=Needs(modules=("onnx", "onnxscript", "onnx_ir"), weight_copies=1))
def rewrite(inputs: Mapping[str, Any], params: RewriteParams, out: Path) -> dict[str, Any]:
    from passes.lib import onnx_files
    from runtime import package_format as fmt

    src = Path(inputs["onnx"])
    model = onnx_files.load_ir(src)
    counts = [_count(model)]
    for name in params.rules:
        model = RULES[name].apply(model)
        counts.append(_count(model))
    onnx_files.save_ir(model, out)
    # The same inputs and outputs with their roles; shapes and dtypes as the rewritten graph has them.
    fmt.write_signature(out, fmt.read_signature(src).with_shapes(*onnx_files.io_shapes(model)))
    return {"rules": list(params.rules), "nodes": counts}


@hook("rewrite", "check")
def check(params: RewriteParams, facts: Any = None) -> None:
    for name in params.rules:
        if name not in RULES:
            raise UserError(f"rewrite.rules: {name!r} is not a rewrite; allowed: {', '.join(RULES)}")


def _count(model: Any) -> int:
    return sum(1 for _ in model.graph.all_nodes())
