"""Where an HF causal LM keeps its decoder stack, whatever the family calls it (layers, h, blocks)."""
from __future__ import annotations

from typing import Any

LAYER_LISTS = ("layers", "h", "blocks")


def decoder_of(model: Any) -> Any:
    """The module holding the decoder layers (LlamaModel, GPT2Model, ...): ``get_decoder()`` where it
    gives one, else the base model, else the first child with a layer list."""
    candidates = []
    if hasattr(model, "get_decoder"):
        candidates.append(model.get_decoder())
    candidates += [getattr(model, name, None) for name in (getattr(model, "base_model_prefix", ""), "model", "transformer")]
    candidates += [child for _, child in model.named_children()]
    for c in candidates:
        if c is not None and c is not model and _layer_list_name(c):
            return c
    raise ValueError(f"{type(model).__name__}: no decoder stack found (a child with one of {LAYER_LISTS})")


def layers_of(decoder: Any) -> Any:
    return getattr(decoder, _layer_list_name(decoder))


def set_layers(decoder: Any, layers: Any) -> None:
    setattr(decoder, _layer_list_name(decoder), layers)


def modeling_module(model: Any) -> str:
    """The modeling module of the decoder layers (where the family's attention and rotary helpers live)."""
    return type(layers_of(decoder_of(model))[0]).__module__


def _layer_list_name(module: Any) -> str | None:
    import torch

    for name in LAYER_LISTS:
        if isinstance(getattr(module, name, None), torch.nn.ModuleList):
            return name
    return None
