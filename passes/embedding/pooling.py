"""Pooling an encoder's last hidden states [batch, seq, hidden] into one vector per text.

Modes (``embedding.pooling``): ``mean`` and ``max`` as sentence-transformers computes them,
``cls`` the first token's state, ``avg`` the masked average as the reference library computes
it (the mean without the clamp), or a user function ``module:function`` taking
(last_hidden_state, attention_mask). ``model_default`` reads a model folder's own choice
(sentence-transformers' modules.json and 1_Pooling/config.json) without importing anything.
Standard library at import; torch only inside the functions that run.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

MODES = ("mean", "cls", "max", "avg")
# sentence-transformers' 1_Pooling/config.json flags, in its own precedence, and the mode each is here
_ST_FLAGS = (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"),
             ("pooling_mode_mean_tokens", "mean"))


def pool(mode: str | Callable, hidden: Any, mask: Any) -> Any:
    """[batch, hidden] from hidden [batch, seq, hidden] and mask [batch, seq] (1: a token)."""
    if callable(mode):
        return mode(hidden, mask)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "mean":
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    if mode == "avg":
        return hidden.masked_fill(m == 0, 0.0).sum(dim=1) / mask.sum(dim=1, keepdim=True).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":  # masked positions set to -1e9, as sentence-transformers does
        return hidden.masked_fill(m == 0, -1e9).max(dim=1).values
    raise ValueError(f"embedding.pooling: {mode!r} is not allowed; allowed: {' | '.join(MODES)} | module:function")


def model_default(folder: Path) -> tuple[str, bool]:
    """(pooling mode, normalize) the model folder declares for sentence-transformers; (mean, False) without."""
    folder = Path(folder)
    modules = folder / "modules.json"
    mode, normalize = "mean", False
    if modules.is_file():
        entries = json.loads(modules.read_text())
        normalize = any(str(e.get("type", "")).endswith("Normalize") for e in entries)
        for entry in entries:
            if str(entry.get("type", "")).endswith("Pooling"):
                config = folder / entry.get("path", "") / "config.json"
                flags = json.loads(config.read_text()) if config.is_file() else {}
                mode = next((m for key, m in _ST_FLAGS if flags.get(key)), "mean")
    return mode, normalize


def is_function(spec: str) -> bool:
    return ":" in spec


def function_source(spec: str) -> str:
    """``module:function`` -> sha256 of the module's source file, found without importing it;
    ValueError (one line naming embedding.pooling) when the module or the function is not there."""
    module, _, name = spec.partition(":")
    bad = f"embedding.pooling: {spec!r} is not allowed; allowed: {' | '.join(MODES)}, or module:function"
    try:
        found = importlib.util.find_spec(module) if module and name.isidentifier() else None
    except (ImportError, ValueError):
        found = None
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise ValueError(f"{bad} (an importable module with a function of (last_hidden_state, attention_mask))")
    source = Path(found.origin).read_bytes()
    defined = {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
    if name not in defined:
        raise ValueError(f"{bad} ({module} defines no function {name!r} at its top level)")
    return "sha256:" + hashlib.sha256(source).hexdigest()


def load_function(spec: str) -> Callable:
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)
