"""Pass `validate`: the package against the original model; a gate on the numerics that ship (exit 1 otherwise).

Two checks, by what the package's target computes (its plugin, pipeline.target_api):

- **Exact**, wherever the package holds an fp32 graph: greedy tokens from ``validate.prompt``
  equal the reference's, and logits within ``validate.atol``, on an fp32 run of the program:
  the package's own session where its target is lossless and here (``package`` for the CPU),
  else ONNX Runtime on the exact ONNX handed to its compiler (``onnx``). A missed soft-cap or
  logit scale can keep every argmax on a tiny model, so logits are gated too. Each LoRA adapter
  likewise. A program whose own weights are lossy (quantize.weights int8/int4) has no such graph.
- **Teacher-forced**, where the package's numerics are lossy (``Target.numerics``: AI 100's
  fp16, MXFP6, MXINT8; int8/int4 weights): the program as it computes (its own session here,
  ``qpc`` on a card, ``package`` for a quantized CPU package;
  else the numerics twin of the ``twin`` stage, e.g. ``onnx-fp16-mxfp6``) against the fp32
  PyTorch model on ``validate.eval_tokens`` of the evaluation text (passes.numerics.gate):
  perplexity ratio, top-1 agreement, mean KL within ``validate.max_ppl_ratio``,
  ``validate.min_top1_agreement``, ``validate.max_mean_kl`` (null: the defaults of its
  numerics). Free-running greedy tokens are recorded, not gated (``matching_prefix_tokens``).

``validation.target`` names what the last check ran. Which runner runs (the ``runner``
param), the evaluation text's digest and the target's code enter the key.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from passes.targets.shapes import CompileShapes
from pipeline.pass_api import (
    REQUIRED, Needs, Output, StageFailure, UserError, cfg_field, config_schema, find_target, hook, register_pass,
)

VALIDATION = "validation.json"
BOUND_KEYS = ("max_ppl_ratio", "min_top1_agreement", "max_mean_kl")


@config_schema("validate")
@dataclass
class ValidateConfig:
    """validate.*: the prompt the reference and the package both continue, and the gates."""

    prompt: str = "The capital of France is"  # prompt of the reference and validate stages
    max_new_tokens: int = 32  # greedy tokens compared (no EOS stop)
    atol: float = 1e-3   # max |logit diff| allowed where the package runs in fp32; tokens must be equal there
    eval_text: Optional[str] = None   # a UTF-8 file; null: Python's reference topics (passes.numerics.eval_text)
    eval_tokens: int = 4096           # tokens of it the teacher-forced gate feeds
    max_ppl_ratio: Optional[float] = None       # perplexity of what ships / of the fp32 reference; null: 1.001 for fp16, 1.01 with an MX format or int8 weights, 1.45 with int4 weights
    min_top1_agreement: Optional[float] = None  # argmax agreement per position; null: reported, not gated
    max_mean_kl: Optional[float] = None         # mean KL(reference || package) per position; null: ln(max_ppl_ratio)


@dataclass(frozen=True)
class ValidateParams:
    prompt: str = cfg_field(ValidateConfig, "prompt")
    max_new_tokens: int = cfg_field(ValidateConfig, "max_new_tokens")
    atol: float = cfg_field(ValidateConfig, "atol")
    eval_text: Optional[str] = cfg_field(ValidateConfig, "eval_text", kind="note")  # enters the key by content
    eval_tokens: int = cfg_field(ValidateConfig, "eval_tokens")
    max_ppl_ratio: Optional[float] = cfg_field(ValidateConfig, "max_ppl_ratio")
    min_top1_agreement: Optional[float] = cfg_field(ValidateConfig, "min_top1_agreement")
    max_mean_kl: Optional[float] = cfg_field(ValidateConfig, "max_mean_kl")
    ctx_len: int = cfg_field(CompileShapes, "ctx_len", kind="note")  # checked against, read from the package
    target: str = cfg_field("hw.target", REQUIRED, kind="target")
    runner: str = ""  # filled by the resolve hook: what runs the package here (the target's runtime, or onnxruntime)
    eval_text_sha256: str = ""  # filled by the resolve hook


# transformers: the runtime tokenizes with it, so its version can change the ids.
@register_pass("validate", params=ValidateParams, deps=("onnxruntime", "transformers", "torch"), materialize=True,
               needs=Needs(modules=("onnxruntime", "transformers")), provides=Output.validation)
def validate(inputs: Mapping[str, Any], params: ValidateParams, out: Path) -> dict[str, Any]:
    """Inputs: ``package``, ``reference``; for a lossy target also ``twin`` (its numerics twin)
    and ``checkpoint`` (the fp32 model the teacher-forced gate compares with)."""
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

    tokenizer = load_tokenizer(package)
    ids = tokenizer(params.prompt).input_ids
    result: dict[str, Any] = {"passed": False, "target": "package", "tokens_compared": 0, "max_abs_logit_diff": None}
    if list(ids) != list(ref["prompt_ids"]):
        _write(out, result, {"error": "prompt ids differ", "package_ids": list(ids), "reference_ids": ref["prompt_ids"]})
        raise StageFailure(f"validate: the package's tokenizer gives prompt ids {list(ids)[:16]}, "
                           f"the reference {ref['prompt_ids'][:16]}", result=result)

    program = fmt.read_program(package)
    target = find_target(program.target)
    own = params.runner == target.runtime and target.runnable(package, program) is None
    numerics = target.numerics(program.build)
    # The exact check: an fp32 run (the package's own session where that is lossless and here, else its
    # ONNX view); none where the program itself is lossy and has no other graph (int8/int4 weights).
    exact_own = own and target.lossless and numerics is None
    exact = numerics is None or program.binary is not None or not target.lossless
    result["target"] = target.label if exact_own else program.validation_target
    failures = []
    if exact:
        session = open_session(package) if exact_own else open_onnx(package)
        result.update(_compare(session, ids, ref["tokens"], ref_logits, params, True, out, VALIDATION))
        failures += [] if result["passed"] else [result.pop("failure")]
        # Each LoRA adapter against its own PEFT reference (adapters/<name>/), in its slot.
        from passes.reference import ADAPTERS

        for name, slot in session.adapters.items():  # the session loaded the package's adapters.json
            folder = reference / ADAPTERS / name
            adapted = _compare(session, ids, json.loads((folder / "reference.json").read_text())["tokens"],
                               np.load(folder / "logits.npy"), params, True, out, f"validation.{name}.json", slot)
            if not adapted["passed"]:
                failures.append(f"adapter {name}: " + adapted.pop("failure"))
            result.setdefault("adapters", {})[name] = adapted
            result["passed"] = result["passed"] and adapted["passed"]
        del session
    else:
        result.update({"passed": True, "exact": "none: the program's own weights are lossy"})
        _write(out, result, {})
    # The teacher-forced gate on what ships: the device here, else the numerics twin.
    if numerics is not None and (own or inputs.get("twin")):
        twin = Path(inputs["twin"]) if inputs.get("twin") else None
        lossy = open_session(package) if own else open_onnx(twin)
        label = target.label if own else lossy.program.validation_target
        gate = _teacher_forced(lossy, tokenizer, Path(inputs["checkpoint"]), params, numerics, label)
        free = _compare(lossy, ids, ref["tokens"], ref_logits, params, False, out, "validation.lossy.json")
        gate["matching_prefix_tokens"] = free["tokens_compared"] - (0 if free["passed"] else 1)
        result.update({"exact_target": result["target"], "exact_passed": result["passed"], "target": label,
                       "gate": gate})
        if gate.get("failure"):
            failures.append(gate.pop("failure"))
            result["passed"] = False
    elif numerics is not None:
        result["numerics_checked"] = False  # no twin stage in this pipeline: only the fp32 graph was checked
    (out / VALIDATION).write_text(json.dumps(_timeless({**json.loads((out / VALIDATION).read_text()), **result}),
                                             indent=2, sort_keys=True) + "\n")
    if failures:
        raise StageFailure("; ".join(failures), result=result)
    return result


def _teacher_forced(session: Any, tokenizer: Any, checkpoint: Path, params: ValidateParams, numerics: Any,
                    label: str) -> dict[str, Any]:
    """passes.numerics.gate over the evaluation text, judged by the bounds (config, else the numerics' defaults)."""
    import torch
    from transformers import AutoModelForCausalLM

    from passes.numerics import eval_text, gate

    text = eval_text.read_text(params.eval_text)
    ids = tokenizer(text).input_ids
    if len(ids) < params.eval_tokens:
        raise UserError(f"validate.eval_tokens: {params.eval_tokens} is not allowed; allowed: at most the "
                        f"{len(ids)} tokens of validate.eval_text ({eval_text.describe(params.eval_text)})")
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    metrics = gate.evaluate(session, model, ids, params.eval_tokens)
    bounds = gate.bounds(gate.default_ppl_ratio(numerics), **{k: getattr(params, k) for k in BOUND_KEYS})
    failure = gate.judge(metrics, bounds, label)
    return {**metrics, "bounds": bounds, "passed": failure is None, "numerics": numerics.to_json(),
            "eval_text": eval_text.describe(params.eval_text), **({"failure": failure} if failure else {})}


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
    logits_ok = not gated or diff <= params.atol  # not gated: a lossy run, whose tokens are information
    result = {"passed": first_diff is None and logits_ok, "tokens_compared": compared, "max_abs_logit_diff": diff,
              "atol": params.atol if gated else None}
    _write(out, result, {"tokens": tokens, "reference_tokens": ref_tokens, "first_difference": first_diff}, file)
    result["metrics"] = gen.metrics  # how fast it ran: the record's, not the tree's
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

    (out / file).write_text(json.dumps(_timeless({**result, **details}), indent=2, sort_keys=True) + "\n")


TIMINGS = ("metrics", "package_tokens_per_second", "reference_tokens_per_second")


def _timeless(doc: Any) -> Any:
    """``doc`` without its timings: what the stage stores is the same bytes for the same key (the
    timings stay in the returned result, which the stage's record keeps)."""
    if isinstance(doc, dict):
        return {k: _timeless(v) for k, v in doc.items() if k not in TIMINGS}
    return doc


@hook("validate", "check")
def check(params: ValidateParams, facts: Any = None) -> None:
    if not params.prompt:
        raise UserError(f"validate.prompt: {params.prompt!r} is not allowed; allowed: a non-empty string")
    if isinstance(params.atol, bool) or not isinstance(params.atol, (int, float)) or not 0 < params.atol < float("inf"):
        raise UserError(f"validate.atol: {params.atol!r} is not allowed; allowed: a number > 0 (max |logit diff|)")
    if params.eval_text is not None and not Path(str(params.eval_text)).expanduser().is_file():
        raise UserError(f"validate.eval_text: {params.eval_text!r} is not allowed; allowed: a UTF-8 text file, or null")
    if isinstance(params.eval_tokens, bool) or not isinstance(params.eval_tokens, int) or params.eval_tokens < 2:
        raise UserError(f"validate.eval_tokens: {params.eval_tokens!r} is not allowed; allowed: an integer >= 2")
    for key in BOUND_KEYS:
        value = getattr(params, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0
                                  or value == float("inf")):
            raise UserError(f"validate.{key}: {value!r} is not allowed; allowed: a finite number >= 0, or null "
                            "(the default of the package's numerics)")
    if not isinstance(params.max_new_tokens, int) or not 1 <= params.max_new_tokens < params.ctx_len:
        raise UserError(f"validate.max_new_tokens: {params.max_new_tokens!r} is not allowed; "
                        f"allowed: 1..{params.ctx_len - 1} (below compile.ctx_len)")


@hook("validate", "resolve")
def resolve(params: ValidateParams) -> ValidateParams:
    """What will run the package here (its target's runtime, or ONNX Runtime), and the evaluation text's digest."""
    import dataclasses

    from passes.numerics import eval_text

    return dataclasses.replace(params, runner=find_target(params.target).runner(),
                               eval_text_sha256=eval_text.digest(params.eval_text))
