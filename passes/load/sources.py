"""Building an HF checkpoint folder from each model source (heavy: imported by the load pass when it runs)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from passes.load.hf_cache import cached_commit, hf_cache_dir, snapshot_dir
from pipeline.pass_api import StageFailure

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# what a snapshot needs for from_pretrained; skips e.g. Llama 3's 16 GB original/*.pth
HUB_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py")


def from_gguf(path: Path, dtype: Any) -> Any:
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


def from_quantized(folder: Path, dtype: Any) -> tuple[Any, dict[str, Any]]:
    """(the float model a quantized checkpoint stands for, its quantized Linears) (passes.load.quantized)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from passes.load import quantized

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    floats, linears = quantized.read(folder)
    state = {name: torch.as_tensor(value) for name, value in floats.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config.get_text_config(), "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise StageFailure(f"load: the quantized checkpoint {folder} does not fit its config: missing "
                           f"{sorted(set(missing) - tied)[:4]}, unexpected {sorted(unexpected)[:4]}")
    model.tie_weights()
    return model.to(dtype).eval(), linears


def from_config(hf_config: Mapping[str, Any], seed: int, dtype: Any) -> Any:
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


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    # local_files_only is recorded in the saved tokenizer_config.json: fix it, whatever HF_HUB_OFFLINE says
    if path.is_file():
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def keep_layers(model: Any, num_layers: int) -> None:
    """Cut a causal LM to its first ``num_layers`` decoder layers (a layer-truncated draft), in place."""
    import torch

    from pipeline.pass_api import UserError

    from passes.lib.hf_decoder import decoder_of, layers_of, set_layers

    decoder, config = decoder_of(model), model.config.get_text_config()
    have = len(layers_of(decoder))
    if num_layers > have:
        raise UserError(f"model.num_layers: {num_layers} is not allowed; allowed: 1..{have} (the model's layers)")
    set_layers(decoder, torch.nn.ModuleList(list(layers_of(decoder))[:num_layers]))
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:num_layers]


def hub_snapshot(hf_id: str, revision: str) -> Path:
    commit = cached_commit(hf_id, revision) or revision
    snapshot = snapshot_dir(hf_id, commit)
    if (snapshot / "config.json").is_file() and any((snapshot / w).is_file() for w in WEIGHT_FILES):
        return snapshot
    from huggingface_hub import snapshot_download

    try:  # not (fully) cached: fetch what from_pretrained needs
        return Path(snapshot_download(hf_id, revision=commit, cache_dir=hf_cache_dir(),
                                      allow_patterns=list(HUB_FILES)))
    except Exception as e:
        raise StageFailure(
            f"load: {hf_id!r} (revision {commit}) could not be fetched from the hub ({type(e).__name__}); "
            f"put a complete snapshot in the local HF cache, or use model.source=local model.path=<HF folder>"
        ) from None
