"""Cheap facts about a model (sizes, limits) read from its config or GGUF header, without torch."""
from __future__ import annotations

import json
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.pass_api import UserError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelFacts:
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


# ---- GGUF ---------------------------------------------------------------------------------
# A minimal reader of the GGUF header (spec: github.com/ggml-org/ggml/blob/master/docs/gguf.md).
# gguf.GGUFReader builds an object per array element and takes about 5 s on SmolLM2's
# 49k-token vocabulary; only counts are needed here, so arrays are skipped, not decoded.

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    def __init__(self, buf, endian: str):
        self.buf, self.pos, self.e = buf, 0, endian

    def take(self, fmt: str):
        (v,) = struct.unpack_from(self.e + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def string(self) -> str:
        n = self.take("Q")
        self.pos += n
        return bytes(self.buf[self.pos - n:self.pos]).decode("utf-8", "replace")

    def value(self, vtype: int):
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.take("I"), self.take("Q")
            if etype in _SCALARS and count <= 1024:  # small numeric arrays (per-layer counts)
                return [self.take(_SCALARS[etype]) for _ in range(count)]
            if etype in _SCALARS:
                self.pos += count * struct.calcsize(_SCALARS[etype])
            else:
                for _ in range(count):
                    self.value(etype)
            return _Skipped(count)
        return self.take(_SCALARS[vtype])


@dataclass(frozen=True)
class _Skipped:
    """A large array whose elements were not decoded."""

    length: int


def is_gguf(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def read_gguf_header(path: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """(metadata key -> value, total tensor elements). Large arrays come back as ``_Skipped``."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != GGUF_MAGIC:
            raise ValueError("not a GGUF file")
        # the version is a small number, so its byte order tells the file's
        endian = "<" if struct.unpack_from("<I", buf, 4)[0] < 0x10000 else ">"
        cur = _Cursor(buf, endian)
        cur.pos = 8
        n_tensors, n_kv = cur.take("Q"), cur.take("Q")
        meta = {}
        for _ in range(n_kv):
            key = cur.string()
            meta[key] = cur.value(cur.take("I"))
        elements = 0
        for _ in range(n_tensors):
            cur.string()
            dims = [cur.take("Q") for _ in range(cur.take("I"))]
            cur.take("I"), cur.take("Q")  # ggml type, data offset
            n = 1
            for d in dims:
                n *= d
            elements += n
    return meta, elements


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
    vocab = get("vocab_size") or (tokens.length if isinstance(tokens, _Skipped) else None)
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


# ---- the local Hugging Face cache -----------------------------------------------------------

_COMMIT = re.compile(r"[0-9a-f]{40}")


def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps models, by the same environment rules it uses."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def repo_cache_dir(hf_id: str) -> Path:
    return hf_cache_dir() / ("models--" + hf_id.replace("/", "--"))


def is_commit(revision: str) -> bool:
    return bool(_COMMIT.fullmatch(revision or ""))


def cached_commit(hf_id: str, revision: str) -> str | None:
    """The commit a branch or tag points to in the local cache; a commit hash is itself."""
    if is_commit(revision):
        return revision
    ref = repo_cache_dir(hf_id) / "refs" / revision
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    return commit if is_commit(commit) else None


def snapshot_dir(hf_id: str, commit: str) -> Path:
    return repo_cache_dir(hf_id) / "snapshots" / commit
