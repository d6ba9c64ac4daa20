"""Pass `validate`: run the package through runtime/ and compare greedy tokens with the reference.

For an AI 100 package: where the Platform SDK's qaicrt is importable, the QPC itself runs
on the device (``validation.target`` "qpc"); elsewhere ONNX Runtime runs the exact ONNX
handed to the compiler ("onnx"). Which of the two enters the key (the ``runner`` param).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.pass_api import Needs, StageFailure, cfg_field, hook, register_pass

VALIDATION = "validation.json"


@dataclass(frozen=True)
class ValidateParams:
    prompt: str = cfg_field("validate.prompt", "The capital of France is")
    max_new_tokens: int = cfg_field("validate.max_new_tokens", 32)
    runner: str = ""  # filled by the resolve hook: "qaicrt" where the AI 100 runtime is importable


# transformers: the runtime tokenizes with it, so its version can change the ids.
@register_pass("validate", params=ValidateParams, deps=("onnxruntime", "transformers"), materialize=True,
               code=("runtime",), needs=Needs(modules=("onnxruntime", "transformers")))
def validate(inputs: Mapping[str, Any], params: ValidateParams, out: Path) -> dict[str, Any]:
    import json

    import numpy as np

    from runtime.generate import generate
    from runtime.ort_session import Session
    from runtime.tokenizer import load_tokenizer

    package, reference = Path(inputs["package"]), Path(inputs["reference"])
    ref = json.loads((reference / "reference.json").read_text())
    ref_logits = np.load(reference / "logits.npy")
    if ref["prompt"] != params.prompt or ref["max_new_tokens"] != params.max_new_tokens:
        raise RuntimeError(f"validate: the reference was made for prompt {ref['prompt']!r} and "
                           f"{ref['max_new_tokens']} tokens, not {params.prompt!r} and {params.max_new_tokens}")

    ids = load_tokenizer(package)(params.prompt).input_ids
    result: dict[str, Any] = {"passed": False, "target": "package", "tokens_compared": 0, "max_abs_logit_diff": None}
    if list(ids) != list(ref["prompt_ids"]):
        _write(out, result, {"error": "prompt ids differ", "package_ids": list(ids), "reference_ids": ref["prompt_ids"]})
        raise StageFailure(f"validate: the package's tokenizer gives prompt ids {list(ids)[:16]}, "
                           f"the reference {ref['prompt_ids'][:16]}", result=result)

    session = Session(package)
    # A CPU package runs itself; an AI 100 package, where no device is, runs the exact ONNX
    # handed to the compiler (its session.json says so).
    result["target"] = session.config.get("validation_target", "package")
    if result["target"] == "onnx" and params.runner == "qaicrt" and (package / "qpc" / "programqpc.bin").is_file():
        from runtime.qaic_session import AI100Session

        session, result["target"] = AI100Session(package), "qpc"
    gen = generate(session, ids, params.max_new_tokens)
    tokens, logits = gen.tokens[0], gen.logits[0]
    ref_tokens = ref["tokens"]
    first_diff = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), None)
    compared = len(ref_tokens) if first_diff is None else first_diff + 1
    # Logits are comparable only up to the first differing token (later steps see other inputs).
    diff = float(np.abs(logits[:compared] - ref_logits[:compared]).max())
    result.update(passed=first_diff is None, tokens_compared=compared, max_abs_logit_diff=diff)
    details = {"tokens": tokens, "reference_tokens": ref_tokens, "first_difference": first_diff,
               "metrics": gen.metrics}
    _write(out, result, details)
    if first_diff is not None:
        i = first_diff
        raise StageFailure(f"validate: token {i} differs: package {tokens[i]} vs reference {ref_tokens[i]} "
                           f"(max abs logit diff {diff:.3g} over {compared} steps)", result=result)
    return result


def _write(out: Path, result: dict[str, Any], details: dict[str, Any]) -> None:
    import json

    (out / VALIDATION).write_text(json.dumps({**result, **details}, indent=2, sort_keys=True) + "\n")


@hook("validate", "resolve")
def resolve(params: ValidateParams) -> ValidateParams:
    """Which runtime will run an AI 100 package here (cheap: nothing is imported)."""
    import dataclasses
    import importlib.util

    sdk = Path("/opt/qti-aic/dev/lib/x86_64")  # runtime.qaic_session.SDK_PYTHON
    found = importlib.util.find_spec("qaicrt") is not None or any(sdk.glob("qaicrt*"))
    return dataclasses.replace(params, runner="qaicrt" if found else "onnxruntime")
