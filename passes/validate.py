"""Pass `validate`: run the package through runtime/ and compare greedy tokens with the reference.

A hard gate: the package's tokens must equal the reference's, and where the package runs in
fp32 (ONNX Runtime: a CPU package, or an AI 100 package's ONNX) its logits must be within
``validate.atol`` of the reference's, since a missed soft-cap or logit scale can keep every
argmax on a tiny model and pass a token check alone (exit 1 otherwise). For an AI 100
package: where the Platform SDK's qaicrt is importable, the QPC itself runs on the device
(``validation.target`` "qpc"); elsewhere ONNX Runtime runs the exact ONNX handed to the
compiler ("onnx"). Which of the two enters the key (the ``runner`` param).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.pass_api import Needs, Output, StageFailure, UserError, cfg_field, hook, register_pass

VALIDATION = "validation.json"


@dataclass(frozen=True)
class ValidateParams:
    prompt: str = cfg_field("validate.prompt", "The capital of France is")
    max_new_tokens: int = cfg_field("validate.max_new_tokens", 32)
    atol: float = cfg_field("validate.atol", 1e-3)
    ctx_len: int = cfg_field("compile.ctx_len", 256, kind="note")  # checked against, read from the package
    runner: str = ""  # filled by the resolve hook: "qaicrt" where the AI 100 runtime is importable


# transformers: the runtime tokenizes with it, so its version can change the ids.
@register_pass("validate", params=ValidateParams, deps=("onnxruntime", "transformers"), materialize=True,
               needs=Needs(modules=("onnxruntime", "transformers")), provides=Output.validation)
def validate(inputs: Mapping[str, Any], params: ValidateParams, out: Path) -> dict[str, Any]:
    import json

    import numpy as np

    from runtime.sessions import open_session
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

    # A CPU package runs itself; an AI 100 package runs its QPC where qaicrt is, else the
    # exact ONNX handed to the compiler (the program's validation target).
    device = "ai100" if params.runner == "qaicrt" and (package / "qpc" / "programqpc.bin").is_file() else "cpu"
    session = open_session(package, device=device)
    result["target"] = "qpc" if device == "ai100" else session.program.validation_target
    gated = result["target"] != "qpc"  # the device's fp16 numerics: tokens only
    result.update(_compare(session, ids, ref["tokens"], ref_logits, params, gated, out, VALIDATION))
    failures = [] if result["passed"] else [result.pop("failure")]
    # Each LoRA adapter against its own PEFT reference (adapters/<name>/), in its slot.
    from passes.reference import ADAPTERS

    for name, slot in session.adapters.items():  # the session loaded the package's adapters.json
        folder = reference / ADAPTERS / name
        adapted = _compare(session, ids, json.loads((folder / "reference.json").read_text())["tokens"],
                           np.load(folder / "logits.npy"), params, gated, out, f"validation.{name}.json", slot)
        if not adapted["passed"]:
            failures.append(f"adapter {name}: " + adapted.pop("failure"))
        result.setdefault("adapters", {})[name] = adapted
        result["passed"] = result["passed"] and adapted["passed"]
    (out / VALIDATION).write_text(json.dumps({**json.loads((out / VALIDATION).read_text()), **result}, indent=2,
                                             sort_keys=True) + "\n")
    if failures:
        raise StageFailure("; ".join(failures), result=result)
    return result


def _compare(session: Any, ids: list[int], ref_tokens: list[int], ref_logits: Any, params: ValidateParams,
             gated: bool, out: Path, file: str, slot: int | None = None) -> dict[str, Any]:
    """Greedy tokens (and, ``gated``, logits) of the package in LoRA ``slot`` against a reference; the
    details in out/<file>, a ``failure`` message when it does not pass."""
    import numpy as np

    from runtime.generate import generate

    batch = session.program.spec("prefill").batch_size
    gen = generate(session, ids, params.max_new_tokens, adapters=None if slot is None else [slot] * batch)
    tokens, logits = gen.tokens[0], gen.logits[0]
    first_diff = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), None)
    compared = len(ref_tokens) if first_diff is None else first_diff + 1
    # Logits are comparable only up to the first differing token (later steps see other inputs).
    diff = float(np.abs(logits[:compared] - ref_logits[:compared]).max())
    logits_ok = not gated or diff <= params.atol
    result = {"passed": first_diff is None and logits_ok, "tokens_compared": compared, "max_abs_logit_diff": diff,
              "atol": params.atol if gated else None}
    _write(out, result, {"tokens": tokens, "reference_tokens": ref_tokens, "first_difference": first_diff,
                         "metrics": gen.metrics}, file)
    if first_diff is not None:
        i = first_diff
        result["failure"] = (f"validate: token {i} differs: package {tokens[i]} vs reference {ref_tokens[i]} "
                             f"(max abs logit diff {diff:.3g} over {compared} steps)")
    elif not logits_ok:
        result["failure"] = (f"validate: max abs logit diff {diff:.3g} over {compared} steps exceeds validate.atol "
                             f"{params.atol:g} (the tokens are equal)")
    return result


def _write(out: Path, result: dict[str, Any], details: dict[str, Any], file: str = VALIDATION) -> None:
    import json

    (out / file).write_text(json.dumps({**result, **details}, indent=2, sort_keys=True) + "\n")


@hook("validate", "check")
def check(params: ValidateParams, facts: Any = None) -> None:
    if not params.prompt:
        raise UserError(f"validate.prompt: {params.prompt!r} is not allowed; allowed: a non-empty string")
    if isinstance(params.atol, bool) or not isinstance(params.atol, (int, float)) or not 0 < params.atol < float("inf"):
        raise UserError(f"validate.atol: {params.atol!r} is not allowed; allowed: a number > 0 (max |logit diff|)")
    if not isinstance(params.max_new_tokens, int) or not 1 <= params.max_new_tokens < params.ctx_len:
        raise UserError(f"validate.max_new_tokens: {params.max_new_tokens!r} is not allowed; "
                        f"allowed: 1..{params.ctx_len - 1} (below compile.ctx_len)")


@hook("validate", "resolve")
def resolve(params: ValidateParams) -> ValidateParams:
    """Which runtime will run an AI 100 package here (cheap: nothing is imported)."""
    import dataclasses

    from passes.targets.ai100.sdk import qaicrt_present

    return dataclasses.replace(params, runner="qaicrt" if qaicrt_present() else "onnxruntime")
