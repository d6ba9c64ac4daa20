"""A checkpoint's model whose parameters are placeholders taking no memory; each weight is read, by name, from the checkpoint's safetensors when it is written.

The placeholders are views of one anonymous memory map as large as the largest parameter:
zeros, resident only once a forward pass reads them (at most the largest parameter's size,
given back by ``drop_pages``), so a trace over the model costs that and the activations. The export attaches the real
weights as lazy tensors (``lazy``), read one at a time while the external data is written.
"""
from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

STREAMED = "streamed_weights"  # the attribute of a wrapper: {parameter name: safetensors index entry}


def skeleton(folder: Path) -> tuple[Any, dict[int, Any]] | None:
    """(the fp32 causal LM of an HF folder with placeholder parameters, {id(parameter): its
    safetensors entry}); None when the folder's weights cannot be read by name (no safetensors, a
    quantization config, a parameter missing or of another shape: such a checkpoint is loaded whole)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from passes.lib import safetensors_io
    from passes.load import random_weights

    entries = safetensors_io.index(folder)
    if entries is None:
        return None
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if getattr(config, "quantization_config", None) is not None:
        return None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager").eval()
    saved = random_weights.saved_tensors(model)
    params = {id(p) for p in model.parameters()}
    found = {}
    for name, tensor in saved.items():
        entry = entries.get(name)
        if entry is None or tuple(entry[2]) != tuple(tensor.shape) or entry[1] not in safetensors_io.DTYPES:
            if id(tensor) in params:
                return None
            continue
        found[id(tensor)] = entry
    if any(id(p) not in found for p in model.parameters()):
        return None
    _real_buffers(model, saved, found)
    return model, _placeholders(model, found)


def _real_buffers(model: Any, saved: dict[str, Any], found: dict[int, Any]) -> None:
    """Buffers made by the family's initializer (rotary tables); those the checkpoint holds read from it."""
    import torch

    from passes.lib import safetensors_io
    from passes.load import random_weights

    for name, module in random_weights.owners(model):
        if any(b is not None and b.is_meta for b in module._buffers.values()):
            random_weights.make(model, name, module, 0, buffers_only=True)
    for name, tensor in saved.items():
        if id(tensor) in found and not isinstance(tensor, torch.nn.Parameter):
            with torch.no_grad():
                tensor.copy_(safetensors_io.read(found[id(tensor)]))


def _placeholders(model: Any, found: dict[int, Any]) -> dict[int, Any]:
    """Every parameter replaced by a zero view of one lazily mapped region; {id(new parameter): entry}."""
    import torch

    from passes.load import random_weights

    params = list(model.parameters())
    biggest = max((p.numel() * p.element_size() for p in params), default=0)
    region = mmap.mmap(-1, max(biggest, 1))
    sources = {}
    for p in params:
        view = torch.frombuffer(region, dtype=p.dtype, count=p.numel()).view(p.shape) if p.numel() else torch.empty(p.shape)
        new = torch.nn.Parameter(view, requires_grad=False)
        random_weights._replace(model, p, new)
        sources[id(new)] = found[id(p)]
    model._placeholder_region = region  # kept alive with the model
    return sources


def drop_pages(module: Any) -> None:
    """Give back the placeholder pages a forward pass made resident (reads fault them in, as zeros;
    they read as zeros again after)."""
    for m in module.modules():
        region = getattr(m, "_placeholder_region", None)
        if region is not None:
            region.madvise(mmap.MADV_DONTNEED)


def mark(wrapper: Any, sources: dict[int, Any]) -> None:
    """Name each placeholder by the wrapper's parameter name (``STREAMED``). A placeholder the
    wrapper no longer holds means a transform replaced that weight (with values computed from
    zeros): an error, not a wrong graph."""
    named = {name: sources[id(p)] for name, p in wrapper.named_parameters() if id(p) in sources}
    if len(named) != len(sources):
        raise RuntimeError(f"static_kv: {len(sources) - len(named)} placeholder weights were replaced by the "
                           "transform; its weights cannot be streamed")
    setattr(wrapper, STREAMED, named)


def lazy(entry: Any, dtype: Any) -> Any:
    """An onnx_ir tensor read from the checkpoint when written, as fp32 (what from_pretrained(dtype=float32) makes)."""
    import onnx_ir as ir
    import torch

    from passes.lib import memory, safetensors_io

    memory.unmap_large_blocks()
    shape = ir.Shape(entry[2])

    def read() -> Any:
        return ir.Tensor(safetensors_io.read(entry).to(torch.float32).numpy())

    return ir.LazyTensor(read, dtype=dtype, shape=shape)


def materialize(wrapper: Any) -> None:
    """Read every streamed weight into the wrapper (exporters that need the values in the module)."""
    import torch

    from passes.lib import safetensors_io

    named = getattr(wrapper, STREAMED, None) or {}
    params = dict(wrapper.named_parameters())
    for name, entry in named.items():
        params[name].data = safetensors_io.read(entry).to(torch.float32)
    setattr(wrapper, STREAMED, {})
