"""The `reference` pass: greedy tokens and per-step logits of the original PyTorch model, for validation."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.pass_api import REQUIRED, Needs, UserError, cfg_field, hook, register_pass

ADAPTERS = "adapters"  # adapters/<name>/: each LoRA adapter's reference


@dataclass(frozen=True)
class ReferenceParams:
    # validate's keys and the transform's adapters: their owners' schemas give the values
    prompt: str = cfg_field("validate.prompt", REQUIRED)
    max_new_tokens: int = cfg_field("validate.max_new_tokens", REQUIRED)
    adapters: Any = cfg_field("model.adapters", REQUIRED, kind="paths")  # each LoRA adapter's own reference too


@register_pass("reference", params=ReferenceParams, deps=("torch", "transformers", "peft"), materialize=True,
               needs=Needs(modules=("torch", "transformers")))
def reference(inputs: Mapping[str, Any], params: ReferenceParams, out: Path) -> dict:
    """Writes reference.json (prompt, prompt_ids, tokens, text, max_new_tokens) and logits.npy.

    logits.npy is float32 [max_new_tokens, vocab]; row i holds the logits new token i was
    the argmax of. Generation never stops early (EOS included), so every row exists. With
    LoRA adapters: the same for each, from the PEFT model in PyTorch, in adapters/<name>/.
    """
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = Path(inputs["checkpoint"])
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    prompt_ids = tokenizer(params.prompt)["input_ids"]
    result = _write_greedy(model, tokenizer, prompt_ids, params, out)
    if params.adapters:
        from peft import PeftModel

        for name, folder in dict(params.adapters).items():
            adapted = PeftModel.from_pretrained(copy.deepcopy(model), folder).eval()
            (out / ADAPTERS / name).mkdir(parents=True)
            result.setdefault("adapters", {})[name] = _write_greedy(adapted, tokenizer, prompt_ids, params,
                                                                    out / ADAPTERS / name)["text"]
    return result


def _write_greedy(model: Any, tokenizer: Any, prompt_ids: list[int], params: ReferenceParams, out: Path) -> dict:
    import numpy as np
    import torch
    from transformers import DynamicCache

    tokens: list[int] = []
    rows = []
    from passes.lib import threads

    cache = DynamicCache(config=model.config)
    step_ids = torch.tensor([prompt_ids])
    with torch.inference_mode(), threads.pinned():  # logits stored under a key: the same bytes on any machine
        for _ in range(params.max_new_tokens):
            logits = model(input_ids=step_ids, past_key_values=cache, use_cache=True).logits[0, -1]
            token = int(torch.argmax(logits))
            rows.append(logits.float().numpy().copy())
            tokens.append(token)
            step_ids = torch.tensor([[token]])

    text = _new_text(tokenizer, prompt_ids, tokens)
    record = {"prompt": params.prompt, "prompt_ids": list(prompt_ids), "tokens": tokens,
              "text": text, "max_new_tokens": params.max_new_tokens}
    (out / "reference.json").write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n")
    np.save(out / "logits.npy", np.stack(rows).astype(np.float32))
    return {"tokens": len(tokens), "text": text}


def _new_text(tokenizer: Any, prompt_ids: list[int], tokens: list[int]) -> str:
    # Decoding the new tokens alone can lose a leading space (SentencePiece); decode the whole
    # sequence and cut the prompt off when that is exact.
    prefix = tokenizer.decode(prompt_ids)
    full = tokenizer.decode(list(prompt_ids) + tokens)
    return full[len(prefix):] if full.startswith(prefix) else tokenizer.decode(tokens)


@hook("reference", "check")
def check(params: ReferenceParams, facts: Any = None) -> None:
    if not params.prompt:
        raise UserError(f"validate.prompt: {params.prompt!r} is not allowed; allowed: a non-empty string")
    if not isinstance(params.max_new_tokens, int) or params.max_new_tokens < 1:
        raise UserError(f"validate.max_new_tokens: {params.max_new_tokens!r} is not allowed; allowed: an integer >= 1")
