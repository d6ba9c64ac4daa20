"""Pass `evaluate`: perplexity of the package, of its numerics twin and of the fp32 PyTorch reference on the evaluation text.

Not a gate (validate is): the numbers users compare across settings (``python -m pipeline.evaluate``,
``--compare``). Each runs teacher-forced over ``validate.eval_tokens`` of ``validate.eval_text``
as the gate does (passes.numerics.gate): the package where its target runs it here (its own
session), the twin where the target's numerics are lossy, the reference once per segment.
Writes evaluation.json; cached by the same inputs as the gate.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from pipeline.pass_api import REQUIRED, Needs, Output, StageFailure, cfg_field, find_target, hook, register_pass

EVALUATION = "evaluation.json"


@dataclass(frozen=True)
class EvaluateParams:
    eval_text: Optional[str] = cfg_field("validate.eval_text", REQUIRED, kind="note")  # enters the key by content
    eval_tokens: int = cfg_field("validate.eval_tokens", REQUIRED)
    target: str = cfg_field("hw.target", REQUIRED, kind="target")
    runner: str = ""            # filled by the resolve hook: what runs the package here
    eval_text_sha256: str = ""  # filled by the resolve hook


@register_pass("evaluate", params=EvaluateParams, deps=("onnxruntime", "transformers", "torch"), materialize=True,
               needs=Needs(modules=("onnxruntime", "transformers", "torch")), provides=Output.evaluation)
def evaluate(inputs: Mapping[str, Any], params: EvaluateParams, out: Path) -> dict[str, Any]:
    """Inputs: ``package``, ``checkpoint`` (the fp32 model), ``twin`` (optional)."""
    import json
    import sys

    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    from passes.numerics import eval_text, gate
    from runtime import package_format as fmt
    from runtime.sessions import open_onnx, open_session
    from runtime.tokenizer import load_tokenizer

    package = Path(inputs["package"])
    program = fmt.read_program(package)
    target = find_target(program.target)
    sessions: dict[str, Any] = {}
    result: dict[str, Any] = {"eval_text": eval_text.describe(params.eval_text), "eval_tokens": params.eval_tokens}
    problem = target.runnable(package, program)
    if params.runner == target.runtime and problem is None:
        sessions[target.label] = open_session(package)
    else:
        result["package_not_run"] = problem or target.absent_reason()
    twin = Path(inputs["twin"]) if inputs.get("twin") else None
    if twin is not None and not json.loads((twin / "twin.json").read_text())["lossless"]:
        session = open_onnx(twin)
        sessions[session.program.validation_target] = session
    tokenizer = load_tokenizer(package)
    ids = tokenizer(eval_text.read_text(params.eval_text)).input_ids
    model = AutoModelForCausalLM.from_pretrained(Path(inputs["checkpoint"]), dtype=torch.float32).eval()
    if not sessions:
        raise StageFailure(f"evaluate: nothing runs here: {result['package_not_run']}, and the target has no twin")
    with tqdm(total=min(len(ids), params.eval_tokens), desc="evaluate", unit="tok", file=sys.stderr, mininterval=1.0) as bar:
        metrics = gate.evaluate_many(sessions, model, ids, params.eval_tokens, bar.update)
    first = next(iter(metrics.values()))  # the reference's figures are in each run's
    result["reference"] = {"ppl": first["ppl_reference"], "tokens_per_second": first["reference_tokens_per_second"],
                           "positions": first["positions"]}
    result["runs"] = {label: {"ppl": m["ppl_package"], "ppl_ratio": m["ppl_ratio"], "mean_kl": m["mean_kl"],
                              "max_kl": m["max_kl"], "top1_agreement": m["top1_agreement"],
                              "nonfinite_positions": m["nonfinite_positions"],
                              "tokens_per_second": m["package_tokens_per_second"]} for label, m in metrics.items()}
    fmt.write_json(out / EVALUATION, result)
    return result


@hook("evaluate", "resolve")
def resolve(params: EvaluateParams) -> EvaluateParams:
    from passes.numerics import eval_text

    return dataclasses.replace(params, runner=find_target(params.target).runner(),
                               eval_text_sha256=eval_text.digest(params.eval_text))
