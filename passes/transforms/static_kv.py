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

    name: SpdScheme = SpdScheme.none  # none | draft | pld | multiproj (the spd group: conf/spd/)
    num_speculative_tokens: Any = 3      # K, or a list of K (one decode specialization each)
    max_ngram_size: int = 3              # pld: the longest n-gram looked up
    speculator: Optional[str] = None     # multiproj: a folder (speculator_config.json, speculator.safetensors); null: random heads


@config_schema("model")
@dataclass
class ModelAdapters:
    """model.adapters: LoRA adapters {name: PEFT folder} in one package, chosen at run time."""

    adapters: Dict[str, str] = field(default_factory=dict)  # LoRA adapters {name: PEFT folder} in one package, chosen at run time; each folder enters the package's key by content


@config_schema("compile")
@dataclass
class AdapterSlots:
    """compile.max_adapters: with model.adapters, LoRA slots per package (adding one up to this recompiles nothing)."""

    max_adapters: int = 8  # with model.adapters: adapter slots of the graph (adding adapters up to it recompiles nothing)


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
    import torch

    from passes.lib.hf_decoder import decoder_of, layers_of
    from passes.transforms import causal_wrapper, lora as lora_inputs, moe

    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = model.to(torch.float32)
    model.eval()
    layout = kv_layout(model, len(layers_of(decoder_of(model))))  # with the model's own attention
    moe.use_dense_experts(model)  # static shapes (a no-op without experts)
    _set_attention(model, attention)
    if projections is not None and not speculative:
        raise ValueError("static_kv: speculator heads need a speculative target (compile.num_speculative_tokens)")
    has_batch_index = continuous_batching and attention != "gqa"  # with gqa, KV rows are chosen by the runtime
    wrapper = causal_wrapper.StaticKvCausalLM(model, has_batch_index, speculative, attention, layout, projections).eval()
    if attention == "gqa":
        causal_wrapper.rotate_in_attention(wrapper)
    if lora is not None:
        targets, wrapper.lora_rank, wrapper.lora_slots = lora
        wrapper.lora_modules = lora_inputs.apply(model, targets)
    return wrapper


def _set_attention(model: Any, attention: str) -> None:
    """GroupQueryAttention put in through transformers' attention interface (gqa; NotImplementedError
    where the model cannot take it), else eager attention (plain ops: exports cleanly for every target)."""
    if attention != "gqa":
        model.set_attn_implementation("eager")
        return
    from transformers import AttentionInterface

    from passes.transforms import gqa

    if any(getattr(m, "sinks", None) is not None for m in model.modules()):
        raise NotImplementedError(f"hw.attention=gqa: {type(model).__name__} has attention sinks, which this "
                                  "GroupQueryAttention program does not take yet; allowed: hw.attention=scatter")
    if not getattr(model, "_supports_attention_backend", False):
        raise NotImplementedError(f"hw.attention=gqa: {type(model).__name__} does not take transformers' attention "
                                  "interface, through which GroupQueryAttention is put in; allowed: hw.attention=scatter")
    AttentionInterface.register(GQA_ATTENTION, gqa.gqa_attention)
    model.set_attn_implementation(GQA_ATTENTION)


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
