"""Cheap facts about a model (sizes, limits) read from its config or GGUF header, without torch."""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from passes.load.gguf_header import Skipped, read_gguf_header
from passes.load.hf_cache import cached_commit, snapshot_dir
from pipeline.pass_api import UserError


@dataclass(frozen=True)
class ModelFacts:
    """What the engine and the hooks of a model's stages may know before anything is loaded.

    The load pass's ``facts`` hook returns these; ``max_positions`` bounds compile.ctx_len and
    ``approx_params`` sizes the disk a stage needs (``Needs.weight_copies``).
    """

    model_type: str | None
    max_positions: int | None
    num_layers: int | None
    hidden_size: int | None
    num_heads: int | None
    num_kv_heads: int | None
    head_dim: int | None
    vocab_size: int | None
    approx_params: int | None  # an estimate, used to size disk needs


def model_facts(
    source: str,
    path: str | os.PathLike | None,
    hf_config: Mapping[str, Any] | None,
    hf_id: str | None = None,
    revision: str | None = None,
) -> ModelFacts:
    """Facts for a model config node (``model.source``, ``model.path``, ...)."""
    if source == "random":
        if not hf_config:
            raise UserError(f"model.hf_config: {hf_config!r} is not allowed; allowed: an inline HF config (source=random)")
        return facts_from_hf_config(hf_config)
    if source == "local":
        return facts_from_hf_config(_read_config_json(path))
    if source == "gguf":
        return facts_from_gguf(path)
    if source == "hub":
        if hf_config:
            return facts_from_hf_config(hf_config)
        commit = cached_commit(hf_id, revision or "main") if hf_id else None
        config = snapshot_dir(hf_id, commit) / "config.json" if commit else None
        if config is not None and config.is_file():
            return facts_from_hf_config(_read_config_json(config.parent))
        return ModelFacts(*([None] * 9))
    raise UserError(f"model.source: {source!r} is not allowed; allowed: hub | local | gguf | random")


# ---- HF configs ---------------------------------------------------------------------------

def _first(cfg: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return None


def facts_from_hf_config(cfg: Mapping[str, Any]) -> ModelFacts:
    """Facts from a config.json-like dict; a missing size stays None (defaults differ per model type)."""
    if isinstance(cfg.get("text_config"), Mapping):  # multimodal wrappers keep the LM inside
        cfg = {**cfg["text_config"], "model_type": cfg.get("model_type")}
    layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
    heads = _first(cfg, "num_attention_heads", "n_head", "num_heads")
    # transformers itself falls back to MHA and hidden/heads when these are absent
    kv_heads = _first(cfg, "num_key_value_heads", "num_kv_heads") or heads
    head_dim = cfg.get("head_dim") or (hidden // heads if hidden and heads else None)
    vocab = cfg.get("vocab_size")
    return ModelFacts(
        model_type=cfg.get("model_type"),
        max_positions=_first(cfg, "max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"),
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        approx_params=_estimate_params(
            layers, hidden, heads, kv_heads, head_dim, vocab,
            _first(cfg, "intermediate_size", "n_inner", "ffn_dim"),
            bool(cfg.get("tie_word_embeddings", False)),
        ),
    )


def _estimate_params(layers, hidden, heads, kv_heads, head_dim, vocab, inter, tied) -> int | None:
    """A decoder-only transformer with a gated MLP (Llama-like); good enough to size disk needs."""
    if not (layers and hidden and vocab):
        return None
    heads = heads or 1
    head_dim = head_dim or hidden // heads
    kv_heads = kv_heads or heads
    inter = inter or 4 * hidden
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    per_layer = attn + 3 * hidden * inter + 2 * hidden
    return vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden


def _read_config_json(folder: str | os.PathLike | None) -> dict:
    if not folder or not Path(folder).is_dir():
        raise UserError(f"model.path: {str(folder)!r} is not a folder; allowed: a Hugging Face model folder with config.json")
    config = Path(folder) / "config.json"
    try:
        return json.loads(config.read_text())
    except FileNotFoundError:
        raise UserError(f"model.path: {str(folder)!r} has no config.json; allowed: a Hugging Face model folder with config.json") from None
    except (OSError, ValueError) as e:
        raise UserError(f"model.path: {str(config)!r} is not readable JSON ({e}); allowed: a Hugging Face config.json") from None


def facts_from_gguf(path: str | os.PathLike | None) -> ModelFacts:
    if not path or not Path(path).is_file():
        raise UserError(f"model.path: {str(path)!r} does not exist; allowed: a GGUF file (source=gguf)")
    try:
        meta, elements = read_gguf_header(path)
    except (OSError, ValueError, struct.error) as e:
        raise UserError(f"model.path: {str(path)!r} is not a readable GGUF file ({e}); allowed: a GGUF file (source=gguf)") from None
    arch = meta.get("general.architecture")

    def get(key: str) -> Any:
        v = meta.get(f"{arch}.{key}")
        return max(v) if isinstance(v, list) and v else v  # per-layer arrays: the largest

    hidden, heads = get("embedding_length"), get("attention.head_count")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = get("vocab_size") or (tokens.length if isinstance(tokens, Skipped) else None)
    return ModelFacts(
        model_type=arch,
        max_positions=get("context_length"),
        num_layers=get("block_count"),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=get("attention.head_count_kv") or heads,
        head_dim=get("attention.key_length") or (hidden // heads if hidden and heads else None),
        vocab_size=vocab,
        approx_params=elements or None,
    )
