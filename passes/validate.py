"""Pass `validate`: run the package through runtime/ and compare greedy tokens with the reference.

A hard gate: the package's tokens must equal the reference's, and where the package runs in
fp32 (the target's own session is lossless, or ONNX Runtime runs the program's ONNX view) its
logits must be within ``validate.atol`` of the reference's, since a missed soft-cap or logit
scale can keep every argmax on a tiny model and pass a token check alone (exit 1 otherwise).
The package's target (its plugin, pipeline.target_api) says what runs: where its device is
here, its own session (``validation.target``: the target's label, e.g. the CPU "package");
elsewhere ONNX Runtime on the exact ONNX handed to its compiler ("onnx"). Which of the two
enters the key (the ``runner`` param), and so does the target's code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from passes.targets.shapes import CompileShapes
from pipeline.pass_api import (
    REQUIRED, Needs, Output, StageFailure, UserError, cfg_field, config_schema, find_target, hook, register_pass,
)

VALIDATION = "validation.json"


@config_schema("validate")
@dataclass
class ValidateConfig:
    """validate.*: the prompt the reference and the package both continue, and the gate."""

    prompt: str = "The capital of France is"
    max_new_tokens: int = 32
    atol: float = 1e-3   # max |logit diff| allowed where the package runs in fp32; tokens must be equal everywhere


@dataclass(frozen=True)
class ValidateParams:
    prompt: str = cfg_field(ValidateConfig, "prompt")
    max_new_tokens: int = cfg_field(ValidateConfig, "max_new_tokens")
    atol: float = cfg_field(ValidateConfig, "atol")
    ctx_len: int = cfg_field(CompileShapes, "ctx_len", kind="note")  # checked against, read from the package
    target: str = cfg_field("hw.target", REQUIRED, kind="target")
    runner: str = ""  # filled by the resolve hook: what runs the package here (the target's runtime, or onnxruntime)


# transformers: the runtime tokenizes with it, so its version can change the ids.
@register_pass("validate", params=ValidateParams, deps=("onnxruntime", "transformers"), materialize=True,
               needs=Needs(modules=("onnxruntime", "transformers")), provides=Output.validation)
def validate(inputs: Mapping[str, Any], params: ValidateParams, out: Path) -> dict[str, Any]:
    import json

    import numpy as np

    from runtime import package_format as fmt
    from runtime.sessions import open_onnx, open_session
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

    # The target's own session where it runs here, else the program's ONNX view with ONNX Runtime.
    program = fmt.read_program(package)
    target = find_target(program.target)
    own = params.runner == target.runtime and target.runnable(package, program) is None
    session = open_session(package) if own else open_onnx(package)
    result["target"] = target.label if own else program.validation_target
    gated = target.lossless or not own  # a lossy device's numerics: tokens only
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
    """What will run the package here: its target's runtime, or ONNX Runtime (cheap: nothing is imported)."""
    import dataclasses

    return dataclasses.replace(params, runner=find_target(params.target).runner())
