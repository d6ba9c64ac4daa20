"""LoRA adapters in a package: ``adapters.json`` (name -> slot) and ``adapters.safetensors`` (the weight inputs).

A package built with ``model.adapters`` has an ``adapter_ids`` input (each row's slot; 0: no
adapter) and LoRA weight inputs (role ``lora_weight``) holding every adapter's weights, stacked
by slot (passes/transforms/lora.py). A session feeds the weights on every run; callers choose
slots per row. A program folder without them (a compile stage's output) runs the base model.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime import package_format as fmt

INDEX = "adapters.json"
WEIGHTS = "adapters.safetensors"
BASE = 0  # the slot of no adapter


def load(folder: str | Path, signature: fmt.Signature) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """(slots by adapter name, weight inputs by name); ({}, {}) for a graph without LoRA inputs."""
    inputs = [v for v in signature.inputs if v.role == fmt.LORA_WEIGHT]
    if not inputs:
        return {}, {}
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file():
        return {}, {v.name: np.zeros(tuple(int(d) for d in v.shape), dtype=np.float32) for v in inputs}
    from safetensors.numpy import load_file

    weights = load_file(str(folder / WEIGHTS))
    missing = [v.name for v in inputs if v.name not in weights]
    if missing:
        raise ValueError(f"{folder / WEIGHTS}: no weights for inputs {missing[:4]}")
    return json.loads((folder / INDEX).read_text())["slots"], {v.name: weights[v.name] for v in inputs}


def slot_of(slots: dict[str, int], name: str | None) -> int:
    """The slot of an adapter by name (None: the base model); ValueError naming the ones there are."""
    if name is None:
        return BASE
    if name not in slots:
        raise ValueError(f"adapter: {name!r} is not allowed; allowed: {', '.join(sorted(slots)) or 'none (the package has no adapters)'}")
    return slots[name]
