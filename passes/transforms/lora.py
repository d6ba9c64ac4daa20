"""LoRA adapters as graph inputs: one package serves many adapters, chosen per row at run time.

Every Linear a set of PEFT LoRA adapters targets (``model.adapters``: name -> PEFT folder) gets
``base(x) + (x @ A[adapter]) @ B[adapter]``, with A [slots, in, rank] and B [slots, rank, out]
graph inputs (role ``lora_weight``) and an ``adapter_ids`` input [batch, 1] choosing each row's
slot: slot 0 is the base model (zeros), adapter i is slot i + 1. So the graph depends only on
the target modules, the (largest) rank and the number of slots (``compile.max_adapters`` + 1),
never on the weights: a new adapter of the same rank and targets needs no new export or compile.
``stack`` builds the weight inputs (each adapter's A and B, zero-padded to the rank, its scaling
folded into B) for the package. ``signature_of`` reads only the adapters' adapter_config.json
(standard library: the cheap hooks use it).
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Mapping

CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_context = threading.local()


def read_config(name: str, folder: str | Path) -> dict[str, Any]:
    """An adapter's config; ValueError (one line naming model.adapters.<name>) when it is not a usable LoRA."""
    folder = Path(folder)
    key = f"model.adapters.{name}"
    if not (folder / CONFIG).is_file() or not any((folder / w).is_file() for w in WEIGHTS):
        raise ValueError(f"{key}: {str(folder)!r} is not allowed; allowed: a PEFT adapter folder with {CONFIG} "
                         f"and {WEIGHTS[0]}")
    config = json.loads((folder / CONFIG).read_text())
    unsupported = [k for k in ("use_dora", "lora_bias") if config.get(k)]
    unsupported += [k for k in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform") if config.get(k)]
    if config.get("peft_type") != "LORA" or unsupported or config.get("bias", "none") != "none":
        raise ValueError(f"{key}: {str(folder)!r} is not allowed; allowed: a plain LoRA adapter (peft_type LORA, "
                         f"no bias, DoRA, per-module ranks or saved modules; this one has {unsupported or config.get('peft_type')})")
    targets = config.get("target_modules")
    if not isinstance(targets, list) or not targets:
        raise ValueError(f"{key}: target_modules {targets!r} is not allowed; allowed: a list of module names")
    return config


def signature_of(adapters: Mapping[str, str]) -> tuple[int, tuple[str, ...]]:
    """(largest rank, target module names sorted) over the adapters: what shapes the graph."""
    configs = [read_config(name, folder) for name, folder in adapters.items()]
    return max(int(c["r"]) for c in configs), tuple(sorted({t for c in configs for t in c["target_modules"]}))


def input_names(path: str) -> tuple[str, str]:
    return f"lora_A.{path}", f"lora_B.{path}"


class Step:
    """One forward's adapter choice: ``ids`` [batch, 1] and the stacked weights by input name."""

    def __init__(self, ids: Any, weights: Mapping[str, Any]):
        self.ids, self.weights = ids, weights


def apply(model: Any, targets: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """Wrap every Linear of the model whose name ends in a target; [(path, in, out)] in module order
    (paths as PEFT names them under ``base_model.model.``)."""
    import torch

    class LoraLinear(torch.nn.Module):
        def __init__(self, base: torch.nn.Linear, path: str):
            super().__init__()
            self.base, self.path = base, path
            self.names = input_names(path)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            step: Step | None = getattr(_context, "step", None)
            out = self.base(x)
            if step is None:
                return out
            rows = step.ids[:, 0]
            a, b = step.weights[self.names[0]][rows], step.weights[self.names[1]][rows]  # [B, in, r], [B, r, out]
            return out + torch.bmm(torch.bmm(x, a), b) if x.dim() == 3 else out + (x.unsqueeze(1) @ a @ b).squeeze(1)

    wrapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], LoraLinear(module, name))
            wrapped.append((name, module.in_features, module.out_features))
    if not wrapped:
        raise ValueError(f"model.adapters: no Linear of the model is named {list(targets)} (the adapters' target_modules)")
    return wrapped


def stepping(step: Step | None) -> Any:
    class _Scope:
        def __enter__(self):
            _context.step = step

        def __exit__(self, *exc):
            _context.step = None

    return _Scope()


def stack(adapters: Mapping[str, str], modules: list[tuple[str, int, int]], rank: int, slots: int) -> dict[str, Any]:
    """The weight inputs: {lora_A.<path>: [slots, in, rank], lora_B.<path>: [slots, rank, out]} float32,
    slot 0 zeros, adapter i (in ``adapters`` order) in slot i + 1, its scaling folded into B."""
    import numpy as np

    out = {}
    for path, n_in, n_out in modules:
        a_name, b_name = input_names(path)
        out[a_name] = np.zeros((slots, n_in, rank), dtype=np.float32)
        out[b_name] = np.zeros((slots, rank, n_out), dtype=np.float32)
    for slot, (name, folder) in enumerate(adapters.items(), start=1):
        config = read_config(name, folder)
        r = int(config["r"])
        scale = float(config.get("lora_alpha", r)) / (r ** 0.5 if config.get("use_rslora") else r)
        tensors = _load(Path(folder))
        for path, _, _ in modules:
            a, b = (tensors.get(f"base_model.model.{path}.lora_{k}.weight") for k in ("A", "B"))
            if a is None or b is None:
                continue  # this adapter does not touch this module: zeros
            a_name, b_name = input_names(path)
            out[a_name][slot, :, :r] = a.T       # A: [r, in]
            out[b_name][slot, :r, :] = b.T * scale  # B: [out, r]
    return out


def _load(folder: Path) -> dict[str, Any]:
    import torch

    if (folder / WEIGHTS[0]).is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(folder / WEIGHTS[0]))
    else:
        tensors = torch.load(folder / WEIGHTS[1], map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in tensors.items()}
