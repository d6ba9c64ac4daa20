"""The `load` pass: any model source (hub, local folder, GGUF file, random config) -> an HF checkpoint folder."""
from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from passes.model_facts import (
    cached_commit, hf_cache_dir, is_commit, is_gguf, model_facts, snapshot_dir,
)
from pipeline.pass_api import Needs, UserError, cfg_field, hook, register_pass

HUB_TIMEOUT_S = 4.0
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# what a snapshot needs for from_pretrained; skips e.g. Llama 3's 16 GB original/*.pth
HUB_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py")


@dataclass(frozen=True)
class LoadParams:
    source: str = cfg_field("model.source", "random")
    hf_id: str | None = cfg_field("model.hf_id", None)
    revision: str = cfg_field("model.revision", "main")
    path: str | None = cfg_field("model.path", None, kind="path")
    hf_config: dict | None = cfg_field("model.hf_config", None)
    tokenizer: str | None = cfg_field("model.tokenizer", None, kind="path")
    seed: int = cfg_field("model.seed", 0)
    dtype: str = cfg_field("model.dtype", "float32")


@register_pass(
    "load",
    params=LoadParams,
    deps=("torch", "transformers", "gguf", "safetensors", "tokenizers"),
    materialize=lambda p: p.source in ("gguf", "random"),
    code=("passes.model_facts",),
)
def load(inputs: Mapping[str, Any], params: LoadParams, out: Path | None) -> Any:
    """gguf/random: fill ``out`` with an HF folder; local/hub: return the existing folder's Path."""
    if params.source == "local":
        return Path(params.path)
    if params.source == "hub":
        return _hub_snapshot(params)

    import torch

    dtype = getattr(torch, params.dtype)
    if params.source == "gguf":
        model = _from_gguf(Path(params.path), dtype)
        tokenizer = _load_tokenizer(Path(params.tokenizer or params.path))
    else:
        model = _from_config(params.hf_config, params.seed, dtype)
        tokenizer = _load_tokenizer(Path(params.tokenizer))
    model.save_pretrained(out)  # safetensors; its metadata is {"format": "pt"}, no timestamps
    tokenizer.save_pretrained(out)
    return {"source": params.source, "model_type": model.config.model_type,
            "params": sum(p.numel() for p in model.parameters())}


def _from_gguf(path: Path, dtype: Any) -> Any:
    import copy

    from transformers import AutoModelForCausalLM

    quantized = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=dtype, local_files_only=True)
    # A GGUF-loaded model refuses save_pretrained (it carries a GGUF quantizer): copy its
    # dequantized weights into a plain model of the same config.
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    return model.eval()


def _from_config(hf_config: Mapping[str, Any], seed: int, dtype: Any) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = _plain(dict(hf_config))
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.random.fork_rng(devices=[]):  # seed locally, leave the caller's RNG alone
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _plain(v: Any) -> Any:
    """Params freeze lists into tuples; HF configs want the JSON shapes back."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    # local_files_only is recorded in the saved tokenizer_config.json: fix it, whatever HF_HUB_OFFLINE says
    if path.is_file():
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _hub_snapshot(params: LoadParams) -> Path:
    commit = cached_commit(params.hf_id, params.revision) or params.revision
    snapshot = snapshot_dir(params.hf_id, commit)
    if (snapshot / "config.json").is_file() and any((snapshot / w).is_file() for w in WEIGHT_FILES):
        return snapshot
    from huggingface_hub import snapshot_download

    try:  # not (fully) cached: fetch what from_pretrained needs
        return Path(snapshot_download(params.hf_id, revision=commit, cache_dir=hf_cache_dir(),
                                      allow_patterns=list(HUB_FILES)))
    except Exception as e:
        raise UserError(
            f"model.hf_id: {params.hf_id!r} (revision {commit}) could not be fetched ({type(e).__name__}); allowed: "
            f"a complete snapshot in the local HF cache, or model.source=local model.path=<HF folder>"
        ) from None


# ---- hooks (cheap: no torch, no transformers) ------------------------------------------------

@hook("load", "check")
def check(params: LoadParams) -> None:
    src = params.source
    if src == "local":
        folder = Path(params.path or "")
        if not params.path or not folder.is_dir():
            raise UserError(f"model.path: {params.path!r} is not a folder; allowed: a Hugging Face model folder with config.json")
        if not (folder / "config.json").is_file():
            raise UserError(f"model.path: {params.path!r} has no config.json; allowed: a Hugging Face model folder with config.json")
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise UserError(f"model.path: {params.path!r} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                            f"allowed: a model folder that holds its tokenizer")
    if src == "gguf":
        if not params.path or not Path(params.path).is_file():
            raise UserError(f"model.path: {params.path!r} does not exist; allowed: a GGUF file (source=gguf)")
        if not is_gguf(params.path):
            raise UserError(f"model.path: {params.path!r} is not a GGUF file (no GGUF magic); allowed: a GGUF file (source=gguf)")
    if src == "hub" and (not params.hf_id or params.hf_id.count("/") > 1):
        raise UserError(f"model.hf_id: {params.hf_id!r} is not allowed; allowed: a hub id like org/name")
    if src == "random":
        model_type = (params.hf_config or {}).get("model_type")
        if not model_type:
            raise UserError(f"model.hf_config.model_type: {model_type!r} is not allowed; allowed: an inline HF config naming model_type")
        known = causal_lm_model_types()
        if known is not None and model_type not in known:
            raise UserError(f"model.hf_config.model_type: {model_type!r} is not allowed; "
                            f"allowed: a causal-LM model type of the installed transformers (e.g. llama, qwen2, gpt2)")
        if not params.tokenizer:
            raise UserError("model.tokenizer: None is not allowed; allowed: a tokenizer folder or GGUF file (source=random)")
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


@functools.lru_cache(maxsize=1)
def causal_lm_model_types() -> frozenset[str] | None:
    """Model types AutoModelForCausalLM knows, read from transformers' source without importing it.

    Parses the literal ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` in models/auto/modeling_auto.py;
    None (the check is skipped) when transformers is absent or that file changed shape.
    """
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(list(spec.submodule_search_locations)[0]) / "models" / "auto" / "modeling_auto.py"
    try:
        tree = ast.parse(source.read_text())
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"
                and isinstance(node.value, ast.Call) and node.value.args):
            try:
                pairs = ast.literal_eval(node.value.args[0])
            except ValueError:
                return None
            return frozenset(k for k, _ in pairs) or None
    return None


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


@hook("load", "needs")
def needs(params: LoadParams) -> Needs:
    modules = ("torch", "transformers") + (("gguf",) if params.source == "gguf" else ())
    if params.source not in ("gguf", "random"):
        return Needs(disk_bytes=0, modules=modules)
    facts = model_facts(params.source, params.path, params.hf_config)
    size = (facts.approx_params or 0) * DTYPE_BYTES.get(params.dtype, 4)
    return Needs(disk_bytes=size, modules=modules)
