"""Attention as ONNX Runtime's GroupQueryAttention (com.microsoft), writing the KV cache in place.

The CPU program's attention: transformers' attention interface calls ``gqa_attention``, which
calls the custom op ``ai100pipeline::gqa``. In PyTorch the op runs a reference implementation
(used when tracing, and by the tests); both exporters emit it as one ``GroupQueryAttention``
node, whose ``present_*`` outputs are the ``past_*`` buffers with the new rows written, so a
runtime that binds both to one buffer updates the cache with no copy.

Per row b of a step: ``query_seqlens[b]`` new tokens (right padding after them), written at
rows ``[seqlens_k[b] + 1 - query_seqlens[b], seqlens_k[b] + 1)`` of the cache, each attending
to the rows up to its own. The wrapper derives both from ``position_ids`` (padding = -1), so the
graph keeps the AI 100 convention's inputs.

Rotary embedding: where the model's attention applies it through its module's
``apply_rotary_pos_emb`` with a static table (the usual RoPE, HF's half-rotation layout),
``ai100pipeline::gqa_rope`` lets GroupQueryAttention rotate q and k itself from cos/sin caches
(the model's own, tabulated over its positions), and the model's rotation is skipped; the
rotation positions are the cache rows, as they are for the position_ids convention. Imported
only when the transform runs (torch).
"""
from __future__ import annotations

import sys
import threading
from typing import Any

import torch
from onnxscript import FLOAT

DOMAIN = "com.microsoft"
_context = threading.local()


@torch.library.custom_op("ai100pipeline::gqa", mutates_args=())
def gqa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, past_key: torch.Tensor,
        past_value: torch.Tensor, seqlens_k: torch.Tensor, total_sequence_length: torch.Tensor,
        query_seqlens: torch.Tensor, num_heads: int, kv_num_heads: int, scale: float, local_window: int = -1,
        softcap: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """query [B, S, Hq*D], key/value [B, S, Hkv*D] (rotated already), past [B, Hkv, C, D] ->
    (output [B, S, Hq*D], present_key, present_value [B, Hkv, C, D]). ``local_window`` > 0: a
    token at row t sees the local_window rows up to t only (GroupQueryAttention's local_window_size);
    ``softcap`` > 0: scores become softcap * tanh(scores / softcap) (as Gemma 2's)."""
    batch, seq, _ = query.shape
    head_dim = past_key.shape[-1]
    group = num_heads // kv_num_heads
    q = query.view(batch, seq, num_heads, head_dim)
    k = key.view(batch, seq, kv_num_heads, head_dim).transpose(1, 2)
    v = value.view(batch, seq, kv_num_heads, head_dim).transpose(1, 2)
    present_key, present_value = past_key.clone(), past_value.clone()
    out = torch.zeros_like(q)
    for b in range(batch):
        n = int(query_seqlens[b])
        start = int(seqlens_k[b]) + 1 - n
        present_key[b, :, start:start + n] = k[b, :, :n]
        present_value[b, :, start:start + n] = v[b, :, :n]
        for s in range(n):
            first = max(0, start + s + 1 - local_window) if local_window > 0 else 0
            keys = present_key[b, :, first:start + s + 1].repeat_interleave(group, dim=0)      # [Hq, T, D]
            values = present_value[b, :, first:start + s + 1].repeat_interleave(group, dim=0)
            scores = (keys @ q[b, s].unsqueeze(-1)).squeeze(-1) * scale
            if softcap > 0:
                scores = softcap * torch.tanh(scores / softcap)
            weights = torch.softmax(scores, dim=-1)  # [Hq, T]
            out[b, s] = (weights.unsqueeze(1) @ values).squeeze(1)
    return out.view(batch, seq, num_heads * head_dim), present_key, present_value


@gqa.register_fake
def _(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, query_seqlens, num_heads,
      kv_num_heads, scale, local_window=-1, softcap=0.0):
    return torch.empty_like(query), torch.empty_like(past_key), torch.empty_like(past_value)


@torch.library.custom_op("ai100pipeline::gqa_rope", mutates_args=())
def gqa_rope(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, past_key: torch.Tensor,
             past_value: torch.Tensor, seqlens_k: torch.Tensor, total_sequence_length: torch.Tensor,
             cos_cache: torch.Tensor, sin_cache: torch.Tensor, query_seqlens: torch.Tensor, num_heads: int,
             kv_num_heads: int, scale: float, local_window: int = -1, softcap: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``gqa`` with q and k rotated first (half-rotation layout) at each token's cache row,
    from cos/sin caches [positions, head_dim / 2]."""
    batch, seq, _ = query.shape
    head_dim = past_key.shape[-1]
    starts = seqlens_k.long() + 1 - query_seqlens.long()
    positions = (starts[:, None] + torch.arange(seq)[None, :]).clamp(0, cos_cache.shape[0] - 1)
    cos, sin = cos_cache[positions].unsqueeze(2), sin_cache[positions].unsqueeze(2)  # [B, S, 1, D/2]

    def rotate(x: torch.Tensor, heads: int) -> torch.Tensor:
        x = x.view(batch, seq, heads, head_dim)
        a, b = x[..., :head_dim // 2], x[..., head_dim // 2:]
        return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1).reshape(batch, seq, heads * head_dim)

    return gqa(rotate(query, num_heads), rotate(key, kv_num_heads), value, past_key, past_value, seqlens_k,
               total_sequence_length, query_seqlens, num_heads, kv_num_heads, scale, local_window, softcap)


@gqa_rope.register_fake
def _(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, cos_cache, sin_cache, query_seqlens,
      num_heads, kv_num_heads, scale, local_window=-1, softcap=0.0):
    return torch.empty_like(query), torch.empty_like(past_key), torch.empty_like(past_value)


def _node(g: Any, inputs: list, rotary: bool, num_heads, kv_num_heads, scale, local_window, softcap) -> Any:
    from torch.onnx import symbolic_helper as sh

    outputs = g.op(f"{DOMAIN}::GroupQueryAttention", *inputs, num_heads_i=sh._get_const(num_heads, "i", "num_heads"),
                   kv_num_heads_i=sh._get_const(kv_num_heads, "i", "kv_num_heads"),
                   scale_f=sh._get_const(scale, "f", "scale"), do_rotary_i=int(rotary), rotary_interleaved_i=0,
                   local_window_size_i=sh._get_const(local_window, "i", "local_window"),
                   softcap_f=sh._get_const(softcap, "f", "softcap"), outputs=3)
    for out, like in zip(outputs, (inputs[0], inputs[3], inputs[4])):  # output like query, presents like pasts
        out.setType(like.type())
    return outputs


def _symbolic(g: Any, query, key, value, past_key, past_value, seqlens_k, total_sequence_length, query_seqlens,
              num_heads, kv_num_heads, scale, local_window, softcap):
    """TorchScript exporter: the op as one GroupQueryAttention node (inputs 7..15 left empty)."""
    from torch.onnx import symbolic_helper as sh

    none = sh._optional_input_placeholder_tensor
    inputs = [query, key, value, past_key, past_value, seqlens_k, total_sequence_length,
              *(none(g) for _ in range(7, 16)), query_seqlens]
    return _node(g, inputs, False, num_heads, kv_num_heads, scale, local_window, softcap)


def _symbolic_rope(g: Any, query, key, value, past_key, past_value, seqlens_k, total_sequence_length, cos_cache,
                   sin_cache, query_seqlens, num_heads, kv_num_heads, scale, local_window, softcap):
    from torch.onnx import symbolic_helper as sh

    none = sh._optional_input_placeholder_tensor
    inputs = [query, key, value, past_key, past_value, seqlens_k, total_sequence_length, cos_cache, sin_cache,
              *(none(g) for _ in range(9, 16)), query_seqlens]
    return _node(g, inputs, True, num_heads, kv_num_heads, scale, local_window, softcap)


def register_exporters(opset: int = 18) -> dict[Any, Any]:
    """Register the TorchScript symbolics; return the dynamo exporter's translation table entries."""
    torch.onnx.register_custom_op_symbolic("ai100pipeline::gqa", _symbolic, 1)
    torch.onnx.register_custom_op_symbolic("ai100pipeline::gqa_rope", _symbolic_rope, 1)
    plain, rope = _onnxscript_functions()
    return {torch.ops.ai100pipeline.gqa.default: plain, torch.ops.ai100pipeline.gqa_rope.default: rope}


def _onnxscript_functions() -> tuple[Any, Any]:
    import onnxscript
    from onnxscript import opset18 as op  # noqa: F401 (the functions' default opset)

    msft = onnxscript.values.Opset(DOMAIN, 1)

    @onnxscript.script(default_opset=op)
    def gqa_node(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, query_seqlens,
                 num_heads: int, kv_num_heads: int, scale: float, local_window: int = -1, softcap: float = 0.0
                 ) -> tuple[FLOAT, FLOAT, FLOAT]:
        out, present_key, present_value = msft.GroupQueryAttention(
            query, key, value, past_key, past_value, seqlens_k, total_sequence_length,
            None, None, None, None, None, None, None, None, None, query_seqlens,
            num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale, local_window_size=local_window, softcap=softcap)
        return out, present_key, present_value

    @onnxscript.script(default_opset=op)
    def gqa_rope_node(query, key, value, past_key, past_value, seqlens_k, total_sequence_length, cos_cache, sin_cache,
                      query_seqlens, num_heads: int, kv_num_heads: int, scale: float, local_window: int = -1, softcap: float = 0.0
                 ) -> tuple[FLOAT, FLOAT, FLOAT]:
        out, present_key, present_value = msft.GroupQueryAttention(
            query, key, value, past_key, past_value, seqlens_k, total_sequence_length, cos_cache, sin_cache,
            None, None, None, None, None, None, None, query_seqlens,
            num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale, do_rotary=1, rotary_interleaved=0,
            local_window_size=local_window, softcap=softcap)
        return out, present_key, present_value

    return gqa_node, gqa_rope_node


class Step:
    """What one forward gives every layer's attention: its past buffers, where the new rows go,
    and the rotary tables when GroupQueryAttention rotates (``rope``: (cos_cache, sin_cache))."""

    def __init__(self, past: list[torch.Tensor], position_ids: torch.Tensor, rope: tuple | None = None):
        self.past = past
        self.rope = rope
        self.rotations = 0  # calls of the model's own rotation while it was skipped
        self.present: list[torch.Tensor | None] = [None] * len(past)
        valid = position_ids >= 0
        self.query_seqlens = valid.sum(dim=1).to(torch.int32)
        # rows are right-padded, so the last valid position is the row's maximum (-1 for an idle row: 0)
        self.seqlens_k = position_ids.max(dim=1).values.clamp(min=0).to(torch.int32)
        # the cache's capacity, as a tensor that follows its dynamic axis under either exporter
        if torch.jit.is_tracing():
            self.total = torch._shape_as_tensor(past[0])[2].to(torch.int32)
        else:
            self.total = torch.full((), past[0].shape[2], dtype=torch.int32)


def stepping(step: Step, attention_module: str) -> Any:
    """Context manager: the attention calls inside use ``step``; with ``step.rope``, the
    ``apply_rotary_pos_emb`` of the model's attention module is skipped (GQA rotates)."""
    module = sys.modules[attention_module]

    def skipped(q, k, *args, **kwargs):
        step.rotations += 1
        return q, k

    class _Scope:
        def __enter__(self):
            _context.step = step
            if step.rope is not None:
                self.original = module.apply_rotary_pos_emb
                module.apply_rotary_pos_emb = skipped

        def __exit__(self, *exc):
            _context.step = None
            if step.rope is not None:
                module.apply_rotary_pos_emb = self.original

    return _Scope()


def rope_tables(model: Any, attention_module: str, head_dim: int, positions: int) -> tuple | None:
    """(cos_cache, sin_cache) [positions, head_dim / 2] from the model's own rotary embedding, or
    None where GroupQueryAttention cannot rotate as the model does (no static half-rotation RoPE
    over the whole head, or no ``apply_rotary_pos_emb`` to skip)."""
    from passes.lib import threads
    from passes.lib.hf_decoder import decoder_of

    decoder = decoder_of(model)
    rotary = getattr(decoder, "rotary_emb", None)
    config = model.config.get_text_config()
    rope_type = (getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}).get("rope_type", "default")
    if rotary is None or rope_type in ("dynamic", "longrope") or not hasattr(sys.modules[attention_module], "apply_rotary_pos_emb"):
        return None
    with torch.no_grad(), threads.pinned():  # the tables become the export's constants
        probe = torch.zeros(1, 1, head_dim)
        try:
            cos, sin = rotary(probe, torch.arange(positions)[None, :])
        except TypeError:  # a rotary per layer type (Gemma 3's local and global): the model rotates
            return None
    cos, sin = cos[0].float(), sin[0].float()
    half = head_dim // 2
    if cos.shape[-1] != head_dim or not torch.equal(cos[:, :half], cos[:, half:]) or not torch.equal(sin[:, :half], sin[:, half:]):
        return None
    return cos[:, :half].contiguous(), sin[:, :half].contiguous()


def gqa_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
                  scaling: float | None = None, dropout: float = 0.0, sliding_window: int | None = None,
                  softcap: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: query [B, Hq, S, D], key/value [B, Hkv, S, D] (the new rows).
    A sliding window of W (a token sees itself and the W - 1 before it, in transformers' masks and
    in GroupQueryAttention's local_window_size alike); ``softcap`` caps the scores (Gemma 2)."""
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError(f"hw.attention=gqa: {type(module).__name__} has attention sinks, which this "
                                  "GroupQueryAttention program does not take yet; allowed: hw.attention=scatter")
    step: Step = _context.step
    layer = module.layer_idx
    batch, num_heads, seq, head_dim = query.shape
    kv_heads = key.shape[1]
    flat = [t.transpose(1, 2).reshape(batch, seq, -1) for t in (query, key, value)]
    past = (step.past[2 * layer], step.past[2 * layer + 1], step.seqlens_k, step.total)
    scale = float(scaling if scaling is not None else head_dim ** -0.5)
    options = (num_heads, kv_heads, scale, int(sliding_window) if sliding_window else -1, float(softcap or 0.0))
    if step.rope is not None:
        out, present_key, present_value = torch.ops.ai100pipeline.gqa_rope(*flat, *past, *step.rope, step.query_seqlens, *options)
    else:
        out, present_key, present_value = torch.ops.ai100pipeline.gqa(*flat, *past, step.query_seqlens, *options)
    step.present[2 * layer], step.present[2 * layer + 1] = present_key, present_value
    return out.view(batch, seq, num_heads, head_dim), None
