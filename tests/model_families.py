"""Decoder families on tiny random configs: the static-KV transform, export and ONNX Runtime against HF greedy.

``check(family, variant)`` runs the passes themselves (static_kv, export, compile_ort) into a
scratch folder, opens the program with runtime/'s ONNX Runtime session and generates with
runtime/'s schedulers; HF's own forward with its dynamic cache gives the reference. Tokens must
be equal for every prompt (the validate stage's gate) and logits within ATOL.

Variants:
  ``cpu``   the CPU program (hw.attention=gqa; scatter where the family cannot take it): two
            prompts of different lengths in one batch of 2.
  ``ai100`` the AI 100 graph (scatter KV), with continuous batching (2 slots, 3 prompts, so a
            finished slot is refilled) and speculative decoding (K=3, prompt lookup proposals)
            at once: batch_index and num_logits_to_keep inputs.
Used by tests/test_model_coverage.py and bench/model_coverage.py (the README's table).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
              pad_token_id=0, tie_word_embeddings=False)
# Per family: what its tiny config sets beyond COMMON, non-default where a family has such a field
# (soft-caps, logit scales, sliding windows, partial rotary, parallel blocks), so a missed one shows.
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {},
    "llama4_text": dict(head_dim=16, num_local_experts=4, num_experts_per_tok=1, intermediate_size_mlp=128,
                        interleave_moe_layer_step=1, attention_chunk_size=8, no_rope_layers=[1, 0],
                        layer_types=["chunked_attention", "full_attention"]),
    "mistral": dict(sliding_window=8),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=8),
    "qwen2": {},
    "qwen3": dict(head_dim=16),
    "qwen3_moe": dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, decoder_sparse_step=1),
    "gemma": dict(head_dim=16),
    "gemma2": dict(head_dim=16, final_logit_softcapping=3.0, attn_logit_softcapping=5.0, sliding_window=8,
                   query_pre_attn_scalar=16),
    "gemma3_text": dict(head_dim=16, final_logit_softcapping=3.0, attn_logit_softcapping=5.0, sliding_window=8,
                        query_pre_attn_scalar=16, sliding_window_pattern=2,
                        layer_types=["sliding_attention", "full_attention"]),
    "phi3": dict(sliding_window=8, partial_rotary_factor=0.5),
    "gpt2": dict(n_positions=512),
    "gptj": dict(rotary_dim=8, n_positions=512),
    "gpt_bigcode": dict(n_positions=512, multi_query=True),
    "starcoder2": dict(sliding_window=8),
    "falcon": dict(new_decoder_architecture=True, num_kv_heads=2, alibi=False, parallel_attn=True),
    "mpt": dict(d_model=64, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=512),
    "granite": dict(logits_scaling=4.0, residual_multiplier=0.5, embedding_multiplier=2.0, attention_multiplier=0.3),
    "granitemoe": dict(logits_scaling=4.0, residual_multiplier=0.5, embedding_multiplier=2.0, attention_multiplier=0.3,
                       num_local_experts=4, num_experts_per_tok=2),
    "olmo2": {},
    "cohere": dict(logit_scale=0.25, use_qk_norm=False),
    "gpt_oss": dict(head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
                    layer_types=["sliding_attention", "full_attention"]),
    "deepseek_v3": dict(num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16,
                        v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
                        moe_intermediate_size=32, first_k_dense_replace=1, n_group=1, topk_group=1),
    "glm4": dict(head_dim=16, partial_rotary_factor=0.5),
}
# Interleaved rotary (Cohere; GLM-4's partial one): the TorchScript exporter bakes a traced shape
# into the graph (Cohere: ONNX Runtime then fails) or fails a Concat (GLM-4); the dynamo exporter
# takes both, so these are checked with export.dynamo=true, as users must build them.
DYNAMO_ONLY = {"cohere", "glm4"}
VARIANTS = ("cpu", "ai100")
NEW_TOKENS = 32
ATOL = 1e-3
PROMPTS = ([5, 17, 29, 101, 7, 55, 230, 41, 19], [3, 88, 140], [61, 62, 63, 64, 61, 62, 63])
CTX_LEN, PREFILL = 64, 16


@dataclass
class Outcome:
    family: str
    variant: str
    passed: bool
    attention: str = ""
    exporter: str = ""
    max_abs_logit_diff: float | None = None
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def tiny_model(family: str) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(family, **{**COMMON, **FAMILIES[family]})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def hf_greedy(model: Any, prompt: list[int], n: int) -> tuple[list[int], Any]:
    """HF's own forward with its dynamic cache: n greedy tokens and the logits each was the argmax of."""
    import numpy as np
    import torch
    from transformers import DynamicCache

    cache, step, tokens, rows = DynamicCache(config=model.config), torch.tensor([prompt]), [], []
    with torch.inference_mode():
        for _ in range(n):
            logits = model(input_ids=step, past_key_values=cache, use_cache=True).logits[0, -1]
            tokens.append(int(logits.argmax()))
            rows.append(logits.numpy().copy())
            step = torch.tensor([[tokens[-1]]])
    return tokens, np.stack(rows)


def check(family: str, variant: str, dynamo: bool | None = None) -> Outcome:
    """Build the family's ``variant`` program (exported by the dynamo exporter with ``dynamo``; by
    default for DYNAMO_ONLY families) and compare with HF; an Outcome (never raises for a model's failure)."""
    dynamo = family in DYNAMO_ONLY if dynamo is None else dynamo
    try:
        return _check(family, variant, dynamo)
    except Exception as e:  # noqa: BLE001 - a family that does not build is an outcome, with its reason
        lines = [line for line in str(e).splitlines() if line.strip()]
        return Outcome(family, variant, False, exporter="dynamo" if dynamo else "torchscript",
                       reason=f"{type(e).__name__}: {lines[-1] if lines else ''}"[:300])


def _check(family: str, variant: str, dynamo: bool = False) -> Outcome:
    import copy

    import numpy as np

    from passes.export import ExportParams, export
    from passes.targets.ort.compile import CompileOrtParams, compile_ort
    from passes.transforms.static_kv import build_wrapper
    from runtime.sessions import open_session

    model = tiny_model(family)
    refs = [hf_greedy(model, p, NEW_TOKENS) for p in PROMPTS]
    cpu = variant == "cpu"
    attention = "gqa" if cpu else "scatter"
    try:
        wrapper = build_wrapper(copy.deepcopy(model), continuous_batching=not cpu, speculative=not cpu, attention=attention)
    except NotImplementedError as e:
        if not cpu:
            raise
        attention, note = "scatter", str(e).splitlines()[0]
        wrapper = build_wrapper(copy.deepcopy(model), attention=attention)
    else:
        note = ""
    variant_params = {} if cpu else {"full_batch_size": 2, "num_speculative_tokens": 3}
    with tempfile.TemporaryDirectory(prefix=f"coverage-{family}-") as tmp:
        graph, program = Path(tmp) / "graph", Path(tmp) / "program"
        graph.mkdir(), program.mkdir()
        export({"model": wrapper}, ExportParams(attention=attention, dynamo=dynamo, opset=18 if dynamo else 17, **variant_params), graph)
        compile_ort({"onnx": graph}, CompileOrtParams(batch_size=2 if cpu else 1, prefill_seq_len=PREFILL,
                                                      ctx_len=CTX_LEN, **variant_params), program)
        session = open_session(program)
        if cpu:
            from runtime.generate import generate

            gen = generate(session, list(PROMPTS[:2]), NEW_TOKENS)
            got = [(gen.tokens[i], gen.logits[i]) for i in range(2)]
            want = refs[:2]
        else:
            from runtime.scheduler import Request
            from runtime.speculative import PromptLookup, SpeculativeScheduler

            run = SpeculativeScheduler(session, PromptLookup(3)).run(
                [Request(i, list(p), NEW_TOKENS) for i, p in enumerate(PROMPTS)])
            got = [(r.ids, None) for r in run.results]
            want = refs
        del session
    diffs, passed = [], True
    for (tokens, logits), (ref_tokens, ref_logits) in zip(got, want):
        same = list(tokens) == ref_tokens
        passed &= same
        if logits is not None:
            n = len(ref_tokens) if same else next(i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b) + 1
            diffs.append(float(np.abs(np.asarray(logits)[:n] - ref_logits[:n]).max()))
    diff = max(diffs) if diffs else None
    if diff is not None and diff > ATOL:
        passed = False
    reason = "" if passed else ("tokens differ" if any(list(t) != r for (t, _), (r, _) in zip(got, want))
                                else f"max |logit diff| {diff:.2e} > {ATOL}")
    return Outcome(family, variant, passed, attention, "dynamo" if dynamo else "torchscript", diff, reason or note,
                   {"tokens": [list(t) for t, _ in got], "reference": [r for r, _ in want]})
