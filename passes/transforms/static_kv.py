"""Pass `static_kv`: wrap an HF causal LM so its KV cache is explicit, fixed-size graph inputs.

Two ways to update the cache (``hw.attention``): ``scatter``, the AI 100 convention (the new
rows written into the past at position_ids by the compiler's CtxScatter, read back through
CtxGather, the whole updated cache returned; see ctx_ops.py), and ``gqa`` (the CPU program:
ONNX Runtime's GroupQueryAttention writes the new rows into the past buffer itself, in place
when the runtime binds past and present to one buffer; see gqa.py). Any decoder family:
its stack found by name (passes/lib/hf_decoder.py), its own head and masks per layer type,
its experts made dense (moe.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from passes.targets.shapes import CompileShapes
from pipeline.pass_api import REQUIRED, Needs, UserError, cfg_field, config_schema, hook, register_pass

MULTIPROJ = "multiproj"  # spd.name whose target carries speculator heads
GQA_ATTENTION = "ai100pipeline_gqa"  # the name it has in transformers' attention interface
SCATTER = "scatter"  # the graph's KV convention where the target's hw schema has no hw.attention (AI 100's)


class SpdScheme(StrEnum):
    none = "none"
    draft = "draft"
    pld = "pld"
    multiproj = "multiproj"


@config_schema("spd")
@dataclass
class SpdConfig:
    """spd.* (conf/spd, runtime.speculative): the scheme and K, the one source of
    compile.num_speculative_tokens when the scheme is not none."""

    name: SpdScheme = SpdScheme.none
    num_speculative_tokens: Any = 3      # K, or a list of K (one decode specialization each)
    max_ngram_size: int = 3              # pld: the longest n-gram looked up
    speculator: Optional[str] = None     # multiproj: a folder (speculator_config.json, speculator.safetensors); null: random heads


@config_schema("model")
@dataclass
class ModelAdapters:
    """model.adapters: LoRA adapters {name: PEFT folder} in one package, chosen at run time."""

    adapters: Dict[str, str] = field(default_factory=dict)


@config_schema("compile")
@dataclass
class AdapterSlots:
    """compile.max_adapters: with model.adapters, LoRA slots per package (adding one up to this recompiles nothing)."""

    max_adapters: int = 8


@dataclass(frozen=True)
class StaticKvParams:
    # Graph variants: only whether each is set matters (the sizes are compile parameters).
    full_batch_size: Any = cfg_field(CompileShapes, "full_batch_size", kind="flag")
    num_speculative_tokens: Any = cfg_field(CompileShapes, "num_speculative_tokens", kind="flag")
    attention: str = cfg_field("hw.attention", SCATTER)  # the target's hw schema (cpu: chosen per model)
    # Multi-projection speculator heads (spd=multiproj): from a folder, or random (seeded, max K of them).
    spd: str = cfg_field(SpdConfig, "name")
    speculator: Any = cfg_field(SpdConfig, "speculator", kind="path")
    num_heads: Any = cfg_field(SpdConfig, "num_speculative_tokens")
    seed: int = cfg_field("model.seed", REQUIRED)
    # LoRA adapters as graph inputs (lora.py): only their largest rank and target modules shape the
    # graph (filled by the resolve hook); the folders are read by the package.
    adapters: Any = cfg_field(ModelAdapters, "adapters", kind="note")
    max_adapters: Any = cfg_field(AdapterSlots, "max_adapters")
    lora_rank: Any = None
    lora_targets: Any = None


@register_pass("static_kv", params=StaticKvParams, deps=("torch", "transformers"), materialize=False,
               needs=Needs(modules=("torch", "transformers")))
def static_kv(inputs: Mapping[str, Any], params: StaticKvParams, out: None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        Path(inputs["checkpoint"]), dtype=torch.float32, attn_implementation="eager"
    )
    lora = (tuple(params.lora_targets), int(params.lora_rank), int(params.max_adapters) + 1) if params.lora_rank else None
    return build_wrapper(model, continuous_batching=params.full_batch_size is not None,
                         speculative=params.num_speculative_tokens is not None, attention=params.attention,
                         projections=_projections(model, params), lora=lora)


def _projections(model: Any, params: StaticKvParams) -> Any:
    if params.spd != MULTIPROJ:
        return None
    from passes.transforms import projections

    hidden = model.config.get_text_config().hidden_size
    if params.speculator is None:
        return projections.random_heads(hidden, int(params.num_heads), params.seed)
    try:
        return projections.load_heads(Path(params.speculator), hidden)
    except ValueError as e:
        raise UserError(str(e)) from None


@hook("static_kv", "check")
def check(params: StaticKvParams, facts: Any = None) -> None:
    check_adapters(params.adapters, params.max_adapters)
    if params.spd == MULTIPROJ and params.speculator is not None:
        folder = Path(params.speculator)
        if not (folder / "speculator_config.json").is_file() or not (folder / "speculator.safetensors").is_file():
            raise UserError(f"spd.speculator: {str(params.speculator)!r} is not allowed; allowed: a folder with "
                            "speculator_config.json and speculator.safetensors, or null (random heads)")


@hook("static_kv", "resolve")
def resolve(params: StaticKvParams) -> StaticKvParams:
    return with_lora_shape(without_unused_heads(without_unused_variants(params)))


def with_lora_shape(params: Any) -> Any:
    """The adapters' largest rank and target modules (their configs: cheap); no adapters: no LoRA
    inputs, and compile.max_adapters stays out of the key."""
    import dataclasses

    from passes.transforms import lora

    if not params.adapters:
        return dataclasses.replace(params, adapters=None, max_adapters=None, lora_rank=None, lora_targets=None)
    rank, targets = lora.signature_of(dict(params.adapters))
    return dataclasses.replace(params, lora_rank=rank, lora_targets=targets)


def check_adapters(adapters: Any, max_adapters: Any) -> None:
    """model.adapters: {name: PEFT LoRA folder}, at most compile.max_adapters of them. One-line UserError."""
    from passes.transforms import lora

    if not adapters:
        return
    if not isinstance(max_adapters, int) or isinstance(max_adapters, bool) or max_adapters < 1:
        raise UserError(f"compile.max_adapters: {max_adapters!r} is not allowed; allowed: an integer >= 1")
    if len(adapters) > max_adapters:
        raise UserError(f"model.adapters: {len(adapters)} adapters is not allowed; allowed: at most "
                        f"compile.max_adapters ({max_adapters}) per package")
    for name, folder in dict(adapters).items():
        if not str(name).isidentifier():
            raise UserError(f"model.adapters: name {name!r} is not allowed; allowed: identifiers (letters, digits, _)")
        try:
            lora.read_config(name, folder)
        except ValueError as e:
            raise UserError(str(e)) from None


def without_unused_heads(params: StaticKvParams) -> StaticKvParams:
    """Only spd=multiproj changes the transform (its heads): any other spd keys as none; a
    speculator folder fixes the heads, so K and the seed stay out of its key."""
    import dataclasses

    if params.spd != MULTIPROJ:
        return dataclasses.replace(params, spd="none", speculator=None, num_heads=None, seed=0)
    if params.speculator is not None:
        return dataclasses.replace(params, num_heads=None, seed=0)
    ks = params.num_heads if isinstance(params.num_heads, (list, tuple)) else [params.num_heads]
    return dataclasses.replace(params, num_heads=max(ks))


def without_unused_variants(params: Any) -> Any:
    """With gqa the graph has no batch_index input (the runtime picks KV rows): continuous
    batching does not change it, so it stays out of the key (the transform and the export)."""
    import dataclasses

    return dataclasses.replace(params, full_batch_size=None) if params.attention == "gqa" else params


def build_wrapper(model: Any, continuous_batching: bool = False, speculative: bool = False,
                  attention: str = "scatter", projections: Any = None, lora: tuple | None = None) -> Any:
    """The static-KV module over an already loaded HF causal LM (eval mode, fp32).

    ``continuous_batching``: a ``batch_index`` input [batch, 1]; the KV tensors hold
    full_batch_size rows and input row r reads and writes KV row batch_index[r]. (With
    ``attention="gqa"`` there is no such input: the runtime hands each step the KV rows it uses.)
    ``speculative``: a ``num_logits_to_keep`` input [n, 1] (only n matters); logits are those
    of the last n valid positions, in order.
    ``projections``: multi-projection speculator heads (projections.py); a ``proposals`` output
    [batch, n, heads] (the last one) holds, at each kept position, the tokens the heads
    predict after the one its logits choose.
    ``lora``: (target modules, rank, slots): an ``adapter_ids`` input [batch, 1], then each
    adapted Linear's stacked A and B weights as inputs (lora.py), after the other inputs.
    """
    import contextlib

    import torch
    from transformers.cache_utils import Cache, CacheLayerMixin

    from passes.lib.hf_decoder import decoder_of, layers_of, modeling_module
    from passes.transforms import ctx_ops, gqa, lora as lora_inputs, moe

    class ScatterLayer(CacheLayerMixin):
        """One layer's cache in the AI 100 convention: the new rows written into the past with CtxScatter
        (CtxScatterCB into the batch's KV rows), attention reading it through CtxGather (CtxGatherCB)."""

        is_compileable = True
        is_sliding = False

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, read: torch.Tensor,
                     batch_index: torch.Tensor | None = None):
            super().__init__()
            self.keys, self.values, self.is_initialized = keys, values, True
            self.positions, self.read, self.batch_index = positions, read, batch_index

        def lazy_initialization(self, key_states, value_states) -> None:
            pass

        def _write(self, past: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            ops = torch.ops.ai100pipeline
            if self.batch_index is None:
                written = ops.ctx_scatter(past, self.positions, new)
                return written, ops.ctx_gather(written, self.read)
            written = ops.ctx_scatter_cb(past, self.batch_index, self.positions, new)
            return written, ops.ctx_gather_cb(written, self.batch_index, self.read)

        def update(self, key_states, value_states, *args, **kwargs):
            self.keys, keys = self._write(self.keys, key_states)
            self.values, values = self._write(self.values, value_states)
            return keys, values

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.keys.shape[-2], 0

        def get_seq_length(self) -> int:
            return 0

        def get_max_length(self) -> int:
            return self.keys.shape[-2]

    class NewRowsLayer(ScatterLayer):
        """GQA writes the cache itself: the layer hands the attention the new rows only."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor):
            super().__init__(keys, values, None, None)

        def update(self, key_states, value_states, *args, **kwargs):
            return key_states, value_states

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
            past, extra = past[:2 * self.num_layers], list(past[2 * self.num_layers:])
            batch_index = extra.pop(0) if self.has_batch_index else None
            num_logits_to_keep = extra.pop(0) if self.has_num_logits_to_keep else None
            adapters = None
            if self.lora_modules:  # adapter_ids, then (A, B) of each adapted Linear
                names = [n for path, _, _ in self.lora_modules for n in lora_inputs.input_names(path)]
                adapters = lora_inputs.Step(extra[0], dict(zip(names, extra[1:])))
            ctx_len = past[0].shape[2]
            valid = position_ids >= 0
            if self.attention == "gqa":
                cache = Cache(layers=[NewRowsLayer(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)])
            else:  # padding (-1) writes the last slot, which the runtime keeps clear of real tokens in a padded step
                read = ctx_ops.read_indices(position_ids, ctx_len)
                cache = Cache(layers=[ScatterLayer(past[2 * i], past[2 * i + 1], position_ids, read, batch_index)
                                      for i in range(self.num_layers)])
            step = None
            if self.attention == "gqa":
                rope = (self.cos_cache, self.sin_cache) if self.gqa_rotary else None
                step = gqa.Step(list(past), position_ids, rope)
            last = position_ids.argmax(dim=1)  # positions increase, so the max is the last valid one
            if num_logits_to_keep is None:
                keep = last[:, None]
            else:  # the n positions ending at the last valid one (clamped at the chunk's start)
                n = num_logits_to_keep.shape[0]
                keep = (last[:, None] - n + 1 + torch.arange(n, device=last.device)[None, :]).clamp(min=0)
            self.keep_index = keep
            # The model's own head (lm_head, then any soft-cap or logit scale its forward applies) runs
            # on the kept positions only: the decoder's hook below hands it those.
            with gqa.stepping(step, self.attention_module) if step else contextlib.nullcontext(), \
                    lora_inputs.stepping(adapters):
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
            projected = torch.stack([head(kept) for head in self.projections], dim=2)  # [b, n, heads, hidden]
            return (logits, *updated, self.model.get_output_embeddings()(projected).argmax(dim=-1))

        def _keep_positions(self, module: Any, args: Any, output: Any) -> Any:
            """The decoder's forward hook: its last hidden state cut to the kept positions."""
            if self.keep_index is None:
                return output
            hidden = output.last_hidden_state
            self.kept = hidden.gather(1, self.keep_index[:, :, None].expand(-1, -1, hidden.shape[-1]))
            output.last_hidden_state = self.kept
            return output

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

    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = model.to(torch.float32)
    model.eval()
    layout = kv_layout(model, len(layers_of(decoder_of(model))))  # with the model's own attention
    moe.use_dense_experts(model)  # static shapes (a no-op without experts)
    if attention == "gqa":
        from transformers import AttentionInterface

        if any(getattr(m, "sinks", None) is not None for m in model.modules()):
            raise NotImplementedError(f"hw.attention=gqa: {type(model).__name__} has attention sinks, which this "
                                      "GroupQueryAttention program does not take yet; allowed: hw.attention=scatter")
        if not getattr(model, "_supports_attention_backend", False):
            raise NotImplementedError(f"hw.attention=gqa: {type(model).__name__} does not take transformers' attention "
                                      "interface, through which GroupQueryAttention is put in; allowed: hw.attention=scatter")
        AttentionInterface.register(GQA_ATTENTION, gqa.gqa_attention)
        model.set_attn_implementation(GQA_ATTENTION)
        continuous_batching = False  # KV rows are chosen by the runtime
    else:
        model.set_attn_implementation("eager")  # plain ops: exports cleanly for every target
    if projections is not None and not speculative:
        raise ValueError("static_kv: speculator heads need a speculative target (compile.num_speculative_tokens)")
    wrapper = StaticKvCausalLM(model, continuous_batching, speculative, attention, layout, projections).eval()
    if attention == "gqa":
        _rotate_in_attention(wrapper)
    if lora is not None:
        targets, wrapper.lora_rank, wrapper.lora_slots = lora
        wrapper.lora_modules = lora_inputs.apply(model, targets)
    return wrapper


def kv_layout(model: Any, num_layers: int) -> tuple[int, int]:
    """(KV heads, head dim) as the model's own cache holds them after one token: whatever the
    family's config calls them (multi-query, grouped, per-family names). One layout for K and V
    in every layer, or NotImplementedError."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 1, dtype=torch.long), past_key_values=cache, use_cache=True)
    shapes = {(t.shape[1], t.shape[-1]) for layer in cache.layers[:num_layers] for t in (layer.keys, layer.values)}
    if len(shapes) != 1:
        raise NotImplementedError(f"static_kv: {type(model).__name__} caches keys and values of several layouts "
                                  f"(heads, head dim) {sorted(shapes)}: not supported yet")
    return shapes.pop()


def _rotate_in_attention(wrapper: Any) -> None:
    """Let GroupQueryAttention apply the rotary embedding where it can do exactly what the model
    does, and check on a short input that the model's own rotation was skipped in every layer."""
    import torch

    from passes.transforms import gqa

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
