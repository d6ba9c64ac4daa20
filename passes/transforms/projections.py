"""The multi-projection speculator's heads: each a stack of residual SiLU-linear blocks over the last hidden state.

Head h turns the hidden state that predicts token t+1 into one that predicts token t+2+h,
read through the model's own lm_head (the reference library's "turbo" projections). A folder
holds ``speculator_config.json`` (``turbo_num_heads``, ``turbo_num_layers``) and
``speculator.safetensors`` (``[projections.]<head>.<block>.linear.{weight,bias}``); without a
folder the heads are random, seeded. Imported only when the transform runs (torch).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

CONFIG_FILE = "speculator_config.json"
WEIGHTS_FILE = "speculator.safetensors"


class ResBlock(torch.nn.Module):
    """x + SiLU(W x + b)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, hidden_size)
        self.act = torch.nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.linear(x))


def heads(hidden_size: int, num_heads: int, num_layers: int) -> torch.nn.ModuleList:
    return torch.nn.ModuleList(torch.nn.Sequential(*(ResBlock(hidden_size) for _ in range(num_layers)))
                               for _ in range(num_heads))


def random_heads(hidden_size: int, num_heads: int, seed: int, num_layers: int = 1) -> torch.nn.ModuleList:
    """Heads with seeded random weights (tests): normal(0, 0.02) weights, zero biases."""
    out = heads(hidden_size, num_heads, num_layers)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in out.modules():
            if isinstance(block, ResBlock):
                block.linear.weight.copy_(torch.randn(block.linear.weight.shape, generator=generator) * 0.02)
                block.linear.bias.zero_()
    return out


def read_config(folder: Path) -> tuple[int, int]:
    """(heads, blocks per head) from a speculator folder; ValueError naming what is wrong."""
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
        num_heads, num_layers = int(config["turbo_num_heads"]), int(config["turbo_num_layers"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"spd.speculator: {str(folder)!r} has no readable {CONFIG_FILE} with turbo_num_heads and "
                         f"turbo_num_layers ({type(e).__name__}: {e})") from None
    if num_heads < 1 or num_layers < 1:
        raise ValueError(f"spd.speculator: {str(path)!r} gives {num_heads} heads of {num_layers} blocks; allowed: >= 1 each")
    return num_heads, num_layers


def load_heads(folder: Path, hidden_size: int) -> torch.nn.ModuleList:
    """The heads a speculator folder describes, with its weights (strict: every tensor, right shapes)."""
    from safetensors.torch import load_file

    num_heads, num_layers = read_config(folder)
    out = heads(hidden_size, num_heads, num_layers)
    weights = {name.removeprefix("projections."): t for name, t in load_file(str(Path(folder) / WEIGHTS_FILE)).items()}
    try:
        out.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ValueError(f"spd.speculator: {str(folder)!r}: {WEIGHTS_FILE} does not fit {num_heads} heads of "
                         f"{num_layers} blocks over hidden size {hidden_size}: {str(e).splitlines()[0]}") from None
    return out


def save_heads(folder: Path, projections: torch.nn.ModuleList) -> None:
    """Write a speculator folder (the format load_heads reads)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    num_layers = len(projections[0])
    (folder / CONFIG_FILE).write_text(json.dumps({"turbo_num_heads": len(projections), "turbo_num_layers": num_layers}) + "\n")
    save_file({f"projections.{k}": v.contiguous() for k, v in projections.state_dict().items()}, str(folder / WEIGHTS_FILE))
