"""The static-KV module: an HF causal LM behind the graph's inputs and outputs, which export traces.

Built by static_kv.build_wrapper; the cache layers are kv_cache.py's. Imported only when the
transform runs (torch).
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from passes.lib.hf_decoder import decoder_of, layers_of, modeling_module
from passes.transforms import gqa, kv_cache, lora


class StaticKvCausalLM(torch.nn.Module):
    """forward(input_ids, position_ids, *past[, batch_index][, num_logits_to_keep])
    -> (logits, *updated past[, proposals]); the optional inputs exist per ``has_batch_index`` and
    ``has_num_logits_to_keep``, in that order after the past tensors; proposals with ``projections``."""

    def __init__(self, model: Any, has_batch_index: bool, has_num_logits_to_keep: bool, attention: str,
                 layout: tuple[int, int], projections: Any = None):
        super().__init__()
        self.projections = projections
        self.projection_heads = len(projections) if projections is not None else 0
        self.attention = attention
        self.gqa_rotary = False  # GroupQueryAttention rotates q and k (cos_cache, sin_cache buffers)
        self.attention_module = modeling_module(model)
        cfg = model.config.get_text_config()
        self.model = model
        self.decoder = decoder_of(model)
        self.num_layers = len(layers_of(self.decoder))
        self.num_kv_heads, self.head_dim = layout
        self.vocab_size = cfg.vocab_size
        self.layer_types = tuple(getattr(cfg, "layer_types", None) or ())
        self.sliding_window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        self.chunk = getattr(cfg, "attention_chunk_size", None) if "chunked_attention" in self.layer_types else None
        self.keep_index = None  # the hidden positions whose logits the step returns (set per forward)
        self.kept = None
        self.decoder.register_forward_hook(self._keep_positions)
        self.has_batch_index = has_batch_index
        self.has_num_logits_to_keep = has_num_logits_to_keep
        self.lora_modules: list[tuple[str, int, int]] = []  # (path, in, out) of each adapted Linear
        self.lora_rank = self.lora_slots = 0

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor):
        # (The varargs keep the name `past`: the dynamo exporter's dynamic_shapes refer to it.)
        past, batch_index, num_logits_to_keep, adapters = self._split_inputs(past)
        ctx_len = past[0].shape[2]
        valid = position_ids >= 0
        cache, step = self._cache(past, position_ids, ctx_len, batch_index)
        self.keep_index = kept_positions(position_ids, num_logits_to_keep)
        # The model's own head (lm_head, then any soft-cap or logit scale its forward applies) runs
        # on the kept positions only: the decoder's hook below hands it those.
        with gqa.stepping(step, self.attention_module) if step else contextlib.nullcontext(), lora.stepping(adapters):
            logits = self.model(
                input_ids=input_ids,
                attention_mask=self._mask(position_ids, ctx_len),
                position_ids=torch.where(valid, position_ids, 0),
                past_key_values=cache,
                use_cache=True,
            ).logits
        kept, self.keep_index, self.kept = self.kept, None, None
        updated = step.present if step else [t for layer in cache.layers for t in (layer.keys, layer.values)]
        if self.projections is None:
            return (logits, *updated)
        return (logits, *updated, self._proposals(kept))

    def _split_inputs(self, inputs: tuple[torch.Tensor, ...]) -> tuple[Any, Any, Any, Any]:
        """(past, batch_index, num_logits_to_keep, LoRA step), None for what the graph does not have;
        the LoRA inputs are adapter_ids, then (A, B) of each adapted Linear."""
        past, extra = inputs[:2 * self.num_layers], list(inputs[2 * self.num_layers:])
        batch_index = extra.pop(0) if self.has_batch_index else None
        num_logits_to_keep = extra.pop(0) if self.has_num_logits_to_keep else None
        adapters = None
        if self.lora_modules:
            names = [n for path, _, _ in self.lora_modules for n in lora.input_names(path)]
            adapters = lora.Step(extra[0], dict(zip(names, extra[1:])))
        return past, batch_index, num_logits_to_keep, adapters

    def _cache(self, past: Any, position_ids: torch.Tensor, ctx_len: Any, batch_index: Any) -> tuple[Any, Any]:
        """The step's cache, and with gqa the GroupQueryAttention step (which writes the past), else None."""
        if self.attention != "gqa":
            return kv_cache.scatter_cache(past, position_ids, ctx_len, batch_index), None
        rope = (self.cos_cache, self.sin_cache) if self.gqa_rotary else None
        return kv_cache.new_rows_cache(past), gqa.Step(list(past), position_ids, rope)

    def _keep_positions(self, module: Any, args: Any, output: Any) -> Any:
        """The decoder's forward hook: its last hidden state cut to the kept positions."""
        if self.keep_index is None:
            return output
        hidden = output.last_hidden_state
        self.kept = hidden.gather(1, self.keep_index[:, :, None].expand(-1, -1, hidden.shape[-1]))
        output.last_hidden_state = self.kept
        return output

    def _proposals(self, kept: torch.Tensor) -> torch.Tensor:
        """[b, n, heads]: at each kept position, the tokens the speculator heads predict after the one its
        logits choose."""
        projected = torch.stack([head(kept) for head in self.projections], dim=2)  # [b, n, heads, hidden]
        return self.model.get_output_embeddings()(projected).argmax(dim=-1)

    def _mask(self, position_ids: torch.Tensor, ctx_len: Any) -> Any:
        """Additive 4D masks [b, 1, s, ctx]: slot k is visible to position p iff k <= p (and within
        the sliding window, or the same chunk, for such layers); one per layer type the model has."""
        slots = torch.arange(ctx_len, device=position_ids.device)[None, None, None, :]
        pos = position_ids[:, None, :, None]
        visible = slots <= pos
        # Finite, not -inf: a padding row (p = -1) sees nothing and must not give NaN.
        neg = torch.finfo(torch.float32).min
        window = visible & (pos - slots < self.sliding_window) if self.sliding_window else visible
        if not self.layer_types:  # one mask for every layer: a sliding window applies to all of them
            return torch.where(window, 0.0, neg)
        masks = {"full_attention": torch.where(visible, 0.0, neg), "sliding_attention": torch.where(window, 0.0, neg)}
        if self.chunk:
            masks["chunked_attention"] = torch.where(visible & (slots // self.chunk == pos // self.chunk), 0.0, neg)
        return masks


def kept_positions(position_ids: torch.Tensor, num_logits_to_keep: torch.Tensor | None) -> torch.Tensor:
    """[b, n] the positions whose logits the step returns: the last valid one, or (``num_logits_to_keep``
    [n, 1]) the n ending at it, clamped at the chunk's start."""
    last = position_ids.argmax(dim=1)  # positions increase, so the max is the last valid one
    if num_logits_to_keep is None:
        return last[:, None]
    n = num_logits_to_keep.shape[0]
    return (last[:, None] - n + 1 + torch.arange(n, device=last.device)[None, :]).clamp(min=0)


def rotate_in_attention(wrapper: StaticKvCausalLM) -> None:
    """Let GroupQueryAttention apply the rotary embedding where it can do exactly what the model
    does, and check on a short input that the model's own rotation was skipped in every layer."""
    cfg = wrapper.model.config.get_text_config()
    positions = getattr(cfg, "max_position_embeddings", None)
    tables = gqa.rope_tables(wrapper.model, wrapper.attention_module, wrapper.head_dim, positions) if positions else None
    if tables is None:
        return
    wrapper.register_buffer("cos_cache", tables[0], persistent=False)
    wrapper.register_buffer("sin_cache", tables[1], persistent=False)
    wrapper.gqa_rotary = True
    past = [torch.zeros(1, wrapper.num_kv_heads, 4, wrapper.head_dim) for _ in range(2 * wrapper.num_layers)]
    step = gqa.Step(past, torch.arange(2)[None, :], (wrapper.cos_cache, wrapper.sin_cache))
    with torch.no_grad(), gqa.stepping(step, wrapper.attention_module):
        wrapper.decoder(input_ids=torch.ones(1, 2, dtype=torch.long), attention_mask=wrapper._mask(torch.arange(2)[None, :], 4),
                        position_ids=torch.arange(2)[None, :], past_key_values=None, use_cache=False)
    if step.rotations != wrapper.num_layers:  # rotated elsewhere, or not in every layer: leave it to the model
        wrapper.gqa_rotary = False
