"""The `load` pass: any model source (hub, local folder, GGUF file, random config) -> an HF checkpoint folder.

Its hooks are cheap (no torch): ``check`` the model config node, ``resolve`` a hub revision to
a commit, ``facts`` (sizes and limits, read from the config or the GGUF header) and ``needs``.
The heavy work is in sources.py, imported when the pass runs.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from passes.lib.transformers_source import causal_lm_classes
from passes.load.facts import ModelFacts, model_facts
from passes.load import quantized
from passes.load.gguf_header import is_gguf
from passes.load.hf_cache import cached_commit, hf_cache_dir, is_commit
from pipeline.pass_api import REQUIRED, Needs, UserError, cfg_field, config_schema, hook, register_pass

HUB_TIMEOUT_S = 4.0
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings", "n_layer", "n_embd", "n_head", "n_positions",
               "n_inner", "n_ctx", "num_layers", "num_heads", "d_model", "ffn_dim", "num_kv_heads", "max_seq_len")


class Source(StrEnum):
    hub = "hub"
    local = "local"
    gguf = "gguf"
    random = "random"


class Dtype(StrEnum):
    float32 = "float32"


@config_schema("model")
@dataclass
class ModelConfig:
    """model.* (and draft_model.*): where the model comes from."""

    name: str = REQUIRED  # the preset's name
    source: Source = Source.random  # hub | local | gguf | random
    hf_id: Optional[str] = None       # source=hub
    revision: str = "main"            # source=hub: branch, tag or commit
    path: Optional[str] = None        # source=local (HF folder) or gguf (file)
    hf_config: Dict[str, Any] = field(default_factory=dict)  # source=random: an inline HF config
    tokenizer: Optional[str] = None   # folder or GGUF file; null: the model's own
    seed: int = 0                     # source=random: seed of the random weights
    dtype: Dtype = Dtype.float32  # the weights' dtype when loaded
    num_layers: Optional[int] = None  # keep the first N decoder layers (a layer-truncated draft); null: all


@dataclass(frozen=True)
class LoadParams:
    source: str = cfg_field(ModelConfig, "source")
    hf_id: str | None = cfg_field(ModelConfig, "hf_id")
    revision: str = cfg_field(ModelConfig, "revision")
    path: str | None = cfg_field(ModelConfig, "path", kind="path")
    hf_config: dict | None = cfg_field(ModelConfig, "hf_config")
    tokenizer: str | None = cfg_field(ModelConfig, "tokenizer", kind="path")
    seed: int = cfg_field(ModelConfig, "seed")
    dtype: str = cfg_field(ModelConfig, "dtype")
    num_layers: int | None = cfg_field(ModelConfig, "num_layers")


@register_pass(
    "load",
    params=LoadParams,
    deps=("torch", "transformers", "gguf", "safetensors", "tokenizers"),
    # a quantized local checkpoint is written out too: as float weights, its integers beside them
    materialize=lambda p: p.source in ("gguf", "random") or p.num_layers is not None
    or (p.source == "local" and quantized.declared(p.path) is not None),
)
def load(inputs: Mapping[str, Any], params: LoadParams, out: Path | None) -> Any:
    """gguf/random (or any source with ``num_layers``): fill ``out`` with an HF folder;
    local/hub: return the existing folder's Path."""
    from passes.load import sources

    folder = None
    if params.source == "local":
        folder = Path(params.path)
    elif params.source == "hub":
        folder = sources.hub_snapshot(params.hf_id, params.revision)
    packed = folder is not None and quantized.declared(folder) is not None
    if folder is not None and params.num_layers is None and not packed:
        return folder

    import torch

    dtype = getattr(torch, params.dtype)
    linears: dict = {}
    if packed:
        model, linears = sources.from_quantized(folder, dtype)
        tokenizer = sources.load_tokenizer(folder)
    elif folder is not None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        tokenizer = sources.load_tokenizer(folder)
    elif params.source == "gguf":
        model = sources.from_gguf(Path(params.path), dtype)
        tokenizer = sources.load_tokenizer(Path(params.tokenizer or params.path))
    else:
        model = sources.from_config(params.hf_config, params.seed, dtype)
        tokenizer = sources.load_tokenizer(Path(params.tokenizer))
    if params.num_layers is not None:
        sources.keep_layers(model, params.num_layers)
    model.save_pretrained(out)  # safetensors; its metadata is {"format": "pt"}, no timestamps
    tokenizer.save_pretrained(out)
    if linears:
        quantized.save(out, linears)  # the checkpoint's integers, for the quantize stage
    return {"source": params.source, "model_type": model.config.model_type,
            "params": sum(p.numel() for p in model.parameters()), "quantized_linears": len(linears)}


# ---- hooks (cheap: no torch, no transformers) ------------------------------------------------

@hook("load", "check")
def check(params: LoadParams, facts: Any = None) -> None:
    src = params.source
    if src == "hub" and not params.hf_id:
        raise UserError(f"model.hf_id: {params.hf_id!r} is not allowed; source=hub needs a hub id like org/name")
    if params.hf_config is not None and not isinstance(params.hf_config, Mapping):
        raise UserError(f"model.hf_config: {params.hf_config!r} is not allowed; allowed: an inline HF config (a mapping "
                        "naming model_type), or {} (source=local, gguf or hub)")
    if src in ("random", "hub") and params.path is not None:
        raise UserError(f"model.path: {params.path!r} is not allowed for source={src}; allowed: null (a path is read "
                        "by source=local or gguf only)")
    if src in ("local", "gguf") and not params.path:
        raise UserError(f"model.path: {params.path!r} is not allowed; source={src} needs a path")
    if src == "local":
        folder = Path(params.path or "")
        if not params.path or not folder.is_dir():
            raise UserError(f"model.path: {params.path!r} is not a folder; allowed: a Hugging Face model folder with config.json")
        if not (folder / "config.json").is_file():
            raise UserError(f"model.path: {params.path!r} has no config.json; allowed: a Hugging Face model folder with config.json")
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise UserError(f"model.path: {params.path!r} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                            f"allowed: a model folder that holds its tokenizer")
        qc = quantized.declared(folder)
        if qc is not None:
            why = quantized.unreadable(qc) if isinstance(qc, Mapping) else "a quantization_config that is not a mapping"
            if why:
                raise UserError(f"model.path: {params.path!r} declares {why}")
    if src == "gguf":
        if not params.path or not Path(params.path).is_file():
            raise UserError(f"model.path: {params.path!r} does not exist; allowed: a GGUF file (source=gguf)")
        if not is_gguf(params.path):
            raise UserError(f"model.path: {params.path!r} is not a GGUF file (no GGUF magic); allowed: a GGUF file (source=gguf)")
    if src == "hub" and (not params.hf_id or params.hf_id.count("/") > 1):
        raise UserError(f"model.hf_id: {params.hf_id!r} is not allowed; allowed: a hub id like org/name")
    if src == "random":
        for name in SIZE_FIELDS:  # the sizes the facts hook and transformers compute with
            value = (params.hf_config or {}).get(name)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value < 1 << 40):
                raise UserError(f"model.hf_config.{name}: {value!r} is not allowed; allowed: an integer >= 1")
        model_type = (params.hf_config or {}).get("model_type")
        if not model_type or not isinstance(model_type, str):
            raise UserError(f"model.hf_config.model_type: {model_type!r} is not allowed; allowed: an inline HF config naming model_type")
        known = causal_lm_model_types()
        if known is not None and model_type not in known:
            raise UserError(f"model.hf_config.model_type: {model_type!r} is not allowed; "
                            f"allowed: a causal-LM model type of the installed transformers (e.g. llama, qwen2, gpt2)")
        if not params.tokenizer:
            raise UserError("model.tokenizer: None is not allowed; allowed: a tokenizer folder or GGUF file (source=random)")
    if params.num_layers is not None and not (isinstance(params.num_layers, int) and not isinstance(params.num_layers, bool)
                                              and params.num_layers >= 1):
        raise UserError(f"model.num_layers: {params.num_layers!r} is not allowed; allowed: an integer >= 1 "
                        "(keep the first N decoder layers), or null (all)")
    if src in ("local", "hub") and params.tokenizer:
        raise UserError(f"model.tokenizer: {params.tokenizer!r} is not allowed for source={src}; "
                        f"allowed: null (the tokenizer in the model folder)")
    if params.tokenizer:
        tok = Path(params.tokenizer)
        if not tok.exists():
            raise UserError(f"model.tokenizer: {params.tokenizer!r} does not exist; allowed: a tokenizer folder or a GGUF file")
        if tok.is_file() and not is_gguf(tok):
            raise UserError(f"model.tokenizer: {params.tokenizer!r} is not a GGUF file; allowed: a tokenizer folder or a GGUF file")
        if tok.is_dir() and not any((tok / f).is_file() for f in TOKENIZER_FILES):
            raise UserError(f"model.tokenizer: {params.tokenizer!r} has no tokenizer files; allowed: a tokenizer folder or a GGUF file")


def causal_lm_model_types() -> frozenset[str] | None:
    """Model types AutoModelForCausalLM knows, read from transformers' source without importing it;
    None (the check is skipped) when transformers is absent or that source changed shape."""
    classes = causal_lm_classes()
    return frozenset(classes) if classes else None


@hook("load", "resolve")
def resolve(params: LoadParams) -> LoadParams:
    """source=hub: the revision becomes a commit hash (local cache first, then the hub, briefly)."""
    if params.source != "hub" or is_commit(params.revision):
        return params
    commit = cached_commit(params.hf_id, params.revision) or _ask_hub(params.hf_id, params.revision)
    return dataclasses.replace(params, revision=commit)


def _ask_hub(hf_id: str, revision: str) -> str:
    unreachable = UserError(
        f"model.hf_id: {hf_id!r} (revision {revision}) is not in the local HF cache ({hf_cache_dir()}) "
        f"and the hub is unreachable; allowed: a cached or reachable hub model, or model.source=local model.path=<HF folder>"
    )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise unreachable
    answer: dict[str, Any] = {}

    def ask() -> None:
        try:
            from huggingface_hub import HfApi

            answer["sha"] = HfApi().model_info(hf_id, revision=revision, timeout=HUB_TIMEOUT_S).sha
        except Exception as e:  # noqa: BLE001 - reported below
            answer["error"] = e

    # A thread bounds the total: DNS lookups ignore the HTTP timeout.
    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(HUB_TIMEOUT_S + 1)
    error = answer.get("error")
    if error is not None and type(error).__name__ in ("RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError"):
        raise UserError(f"model.hf_id: {hf_id!r} (revision {revision}) is not allowed; the hub says {type(error).__name__}; "
                        "allowed: an existing model and revision you can access") from None
    if not answer.get("sha"):
        raise unreachable
    return answer["sha"]


@hook("load", "facts")
def facts(params: LoadParams) -> ModelFacts:
    found = model_facts(params.source, params.path, params.hf_config, hf_id=params.hf_id, revision=params.revision)
    if params.num_layers is not None and found.num_layers is not None:
        if params.num_layers > found.num_layers:
            raise UserError(f"model.num_layers: {params.num_layers} is not allowed; allowed: 1..{found.num_layers} "
                            "(the model's layers)")
        found = dataclasses.replace(found, num_layers=params.num_layers)
    return found


@hook("load", "needs")
def needs(params: LoadParams, facts: ModelFacts | None) -> Needs:
    modules = ("torch", "transformers") + (("gguf",) if params.source == "gguf" else ())
    if params.source not in ("gguf", "random"):
        return Needs(disk_bytes=0, modules=modules)
    size = ((facts.approx_params if facts else 0) or 0) * DTYPE_BYTES.get(params.dtype, 4)
    return Needs(disk_bytes=size, modules=modules)
