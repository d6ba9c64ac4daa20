"""Passes and targets found by name, through entry points (pyproject.toml), never imported by the engine itself.

    [project.entry-points."pipeline.passes"]   <pass name> = "<module>:<function>"
    [project.entry-points."pipeline.targets"]  <hw.target> = "<module>:<hw schema dataclass>"

Loading a pass imports its module, which is cheap by contract (pipeline.pass_api). Another
distribution can add passes and targets by declaring entry points of its own.
"""
from __future__ import annotations

import functools
from typing import Any

from pipeline.pass_api import REGISTRY, PassSpec, UserError

PASSES = "pipeline.passes"
TARGETS = "pipeline.targets"


@functools.lru_cache(maxsize=None)
def _entry_points(group: str) -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=group)}


def pass_names() -> list[str]:
    return sorted(_entry_points(PASSES))


def find_pass(name: str, where: str) -> PassSpec:
    """The registered pass of that name; ``where`` is the config key that named it (for the error)."""
    if name not in REGISTRY:
        ep = _entry_points(PASSES).get(name)
        if ep is None:
            known = ", ".join(pass_names()) or "none (the project is not installed: run `make setup`)"
            raise UserError(f"{where}: {name!r} is not a registered pass; allowed: {known}")
        fn = ep.load()
        if getattr(fn, "pass_spec", None) is None or fn.pass_spec.name != name:
            raise RuntimeError(f"entry point {PASSES}:{name} = {ep.value} is not the pass {name!r}")
    return REGISTRY[name]


def target_schemas() -> dict[str, type]:
    """hw.target -> the hw schema dataclass of that target (registered as ``hw_schema/<target>``)."""
    return {name: ep.load() for name, ep in _entry_points(TARGETS).items()}
