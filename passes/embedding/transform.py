"""Pass `embedding`: an HF encoder and its pooling (and normalization) as one module,
``(input_ids, attention_mask) -> [batch, hidden]``, the graph an embedding package runs.

``embedding.pooling`` (pooling.py; null: the model's own) and ``embedding.normalize`` (null:
the model's own) are resolved here from the checkpoint, an input, so the key stays true; a
user function's module enters the key by its source's digest (the resolve hook).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from passes.embedding import pooling
from pipeline.pass_api import Needs, UserError, cfg_field, config_schema, hook, register_pass


@config_schema("embedding")
@dataclass
class EmbeddingConfig:
    """embedding.*: how the encoder's last hidden states become one vector (pipeline=embedding)."""

    pooling: Optional[str] = None     # mean | cls | max | avg | module:function; null: the model's own (sentence-transformers config)
    normalize: Optional[bool] = None  # L2-normalize; null: the model's own


@dataclass(frozen=True)
class EmbeddingParams:
    pooling: Any = cfg_field(EmbeddingConfig, "pooling")
    normalize: Any = cfg_field(EmbeddingConfig, "normalize")
    pooling_source: str = ""  # filled by the resolve hook: a pooling function's module digest


def settings(checkpoint: Path, pooling_mode: Any, normalize: Any) -> tuple[str, bool]:
    """(pooling, normalize) as this build uses them: the config's, else the model's own."""
    own_mode, own_normalize = pooling.model_default(checkpoint)
    return (pooling_mode or own_mode, own_normalize if normalize is None else bool(normalize))


@register_pass("embedding", params=EmbeddingParams, deps=("torch", "transformers"), materialize=False,
               needs=Needs(modules=("torch", "transformers")))
def embedding(inputs: Mapping[str, Any], params: EmbeddingParams, out: None) -> Any:
    import torch
    from transformers import AutoModel

    checkpoint = Path(inputs["checkpoint"])
    model = AutoModel.from_pretrained(checkpoint, dtype=torch.float32, attn_implementation="eager")
    return build_encoder(model, *settings(checkpoint, params.pooling, params.normalize))


def build_encoder(model: Any, mode: str, normalize: bool) -> Any:
    """The module over a loaded HF encoder (AutoModel): its last hidden states pooled by ``mode``
    (a mode or module:function), L2-normalized with ``normalize``."""
    import torch

    function = pooling.load_function(mode) if pooling.is_function(mode) else mode

    class EncoderEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model.eval()
            self.pooling, self.normalize = mode, normalize
            self.hidden_size = int(model.config.hidden_size)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            pooled = pooling.pool(function, hidden, attention_mask)
            return torch.nn.functional.normalize(pooled, p=2, dim=1) if normalize else pooled

    return EncoderEmbedding().eval()


@hook("embedding", "check")
def check(params: EmbeddingParams, facts: Any = None) -> None:
    if params.pooling is not None:
        if not isinstance(params.pooling, str):
            raise UserError(f"embedding.pooling: {params.pooling!r} is not allowed; allowed: "
                            f"{' | '.join(pooling.MODES)} | module:function, or null (the model's own)")
        if pooling.is_function(params.pooling):
            try:
                pooling.function_source(params.pooling)
            except ValueError as e:
                raise UserError(str(e)) from None
        elif params.pooling not in pooling.MODES:
            raise UserError(f"embedding.pooling: {params.pooling!r} is not allowed; allowed: "
                            f"{' | '.join(pooling.MODES)} | module:function, or null (the model's own)")
    if params.normalize not in (None, True, False):
        raise UserError(f"embedding.normalize: {params.normalize!r} is not allowed; allowed: true | false | null "
                        "(the model's own)")


@hook("embedding", "resolve")
def resolve(params: EmbeddingParams) -> EmbeddingParams:
    if isinstance(params.pooling, str) and pooling.is_function(params.pooling):
        return dataclasses.replace(params, pooling_source=pooling.function_source(params.pooling))
    return params
