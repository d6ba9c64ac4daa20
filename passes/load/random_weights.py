"""Seeded random weights made one module at a time: the same values built in memory or streamed to safetensors.

The model is built on the meta device; each module that holds tensors is then given real
ones (filled with NaN), and its family's own ``_init_weights`` fills them under a generator
seeded by (model.seed, the module's name). A tensor's values thus depend on its name and the
seed only, never on which other modules were made before it, so ``build`` (every module, in
memory) and ``stream`` (one module at a time, written and dropped) give the same weights.
A tensor the family's initializer leaves unset (still NaN) is an error, not silent garbage.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator, Mapping

from pipeline.pass_api import StageFailure

WEIGHTS = "model.safetensors"
MADE = "_random_weights_made"


def skeleton(hf_config: Mapping[str, Any], dtype: Any) -> Any:
    """The causal LM of an inline HF config with every parameter and buffer on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from passes.load.sources import _plain

    fields = _plain(dict(hf_config))
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def build(hf_config: Mapping[str, Any], seed: int, dtype: Any, num_layers: int | None = None) -> Any:
    """The whole model in memory, every module made by ``make``."""
    model = skeleton(hf_config, dtype)
    _keep(model, num_layers)
    for name, module in owners(model):
        make(model, name, module, seed)
    return model


def stream(hf_config: Mapping[str, Any], seed: int, dtype: Any, out: Path, num_layers: int | None = None) -> Any:
    """Write out/model.safetensors module by module (one module's tensors in memory at a time); the
    model, back on the meta device, for its config."""
    from passes.lib import memory, safetensors_io

    memory.unmap_large_blocks()
    model = skeleton(hf_config, dtype)
    _keep(model, num_layers)
    saved = saved_tensors(model)
    writer = safetensors_io.Writer(out / WEIGHTS, {n: (safetensors_io.dtype_name(t), tuple(t.shape))
                                                   for n, t in saved.items()}, {"format": "pt"})
    try:
        for name, module in owners(model):
            for attr, tensor in make(model, name, module, seed):
                full = f"{name}.{attr}" if name else attr
                if full in saved:
                    writer.write(full, tensor)
            _release(model, module)
    finally:
        writer.close()
    return model


def _keep(model: Any, num_layers: int | None) -> None:
    if num_layers is not None:
        from passes.load.sources import keep_layers

        keep_layers(model, num_layers)


def saved_tensors(model: Any) -> dict[str, Any]:
    """The state dict save_pretrained writes: persistent tensors, a tied tensor under its first name only."""
    seen: set[int] = set()
    saved = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            saved[name] = tensor
    return saved


def owners(model: Any) -> list[tuple[str, Any]]:
    """(name, module) of every module holding parameters or buffers of its own, in module order."""
    return [(name, m) for name, m in model.named_modules()
            if any(t is not None for t in (*m._parameters.values(), *m._buffers.values()))]


def module_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def make(model: Any, name: str, module: Any, seed: int, buffers_only: bool = False) -> list[tuple[str, Any]]:
    """Give ``module``'s own meta tensors real values (its family's initializer, seeded by its name);
    [(attribute, tensor)] of the tensors made now. A tied weight is made once, by the first module
    holding it (a tensor made before, or released after being written, carries ``MADE``).
    ``buffers_only``: make the buffers (rotary tables) and leave the parameters on the meta device."""
    import torch
    from transformers import initialization

    fresh = []
    for table in (module._buffers,) if buffers_only else (module._parameters, module._buffers):
        for attr, old in table.items():
            if old is None or not old.is_meta or getattr(old, MADE, False):
                continue
            fill = float("nan") if old.dtype.is_floating_point else 0
            value = torch.full(old.shape, fill, dtype=old.dtype)
            if isinstance(old, torch.nn.Parameter):
                value = torch.nn.Parameter(value, requires_grad=old.requires_grad)
            _replace(model, old, value)
            fresh.append((attr, value))
    if not fresh:
        return []
    for tensor in (*module._parameters.values(), *module._buffers.values()):
        if tensor is not None and all(tensor is not v for _, v in fresh):
            tensor._is_hf_initialized = True  # made by an earlier module (tied): leave it
    with torch.random.fork_rng(devices=[]), torch.no_grad(), initialization.guard_torch_init_functions():
        torch.manual_seed(module_seed(seed, name))
        _initializer(model, name)._init_weights(module)
    for attr, value in fresh:
        setattr(value, MADE, True)
        if value.dtype.is_floating_point and bool(torch.isnan(value.sum())):  # a sum: no mask as large as the tensor
            raise StageFailure(f"load: {type(model).__name__}'s initializer leaves {name}.{attr} unset; random "
                               "weights for this model type are not supported (use model.source=local or hub)")
    return fresh


def _initializer(model: Any, name: str) -> Any:
    """The innermost PreTrainedModel holding module ``name`` (composite models initialize their parts)."""
    from transformers import PreTrainedModel

    owner, path = model, ""
    for part in name.split(".") if name else []:
        path = f"{path}.{part}" if path else part
        sub = model.get_submodule(path)
        if isinstance(sub, PreTrainedModel):
            owner = sub
    return owner


def _holders(model: Any, tensor: Any) -> Iterator[tuple[dict, str]]:
    for m in model.modules():
        for table in (m._parameters, m._buffers):
            for attr, t in table.items():
                if t is tensor:
                    yield table, attr


def _replace(model: Any, old: Any, new: Any) -> None:
    for table, attr in list(_holders(model, old)):
        table[attr] = new


def _release(model: Any, module: Any) -> None:
    """Put ``module``'s tensors back on the meta device (marked made: they were written)."""
    import torch

    for table in (module._parameters, module._buffers):
        for attr, t in list(table.items()):
            if t is None or t.is_meta:
                continue
            meta = t.to("meta")
            if isinstance(t, torch.nn.Parameter):
                meta = torch.nn.Parameter(meta, requires_grad=t.requires_grad)
            setattr(meta, MADE, True)
            _replace(model, t, meta)
