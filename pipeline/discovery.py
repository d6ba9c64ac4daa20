"""Passes, targets and sessions found by name through entry points (pyproject.toml), never imported by the engine itself.

    [project.entry-points."pipeline.passes"]   <pass name> = "<module>:<function>"
    [project.entry-points."pipeline.targets"]  <hw.target> = "<module>:<Target class>"   (pipeline.target_api)
    [project.entry-points."pipeline.sessions"] <hw.target> = "<module>:<Session class>"  (runtime.sessions)

Loading a pass or a target imports its module, which is cheap by contract (pipeline.pass_api).
Another distribution can add passes and targets by declaring entry points of its own.
"""
from __future__ import annotations

import functools

from pipeline.pass_api import REGISTRY, PassSpec, UserError
from pipeline.target_api import TARGETS, Target, entry_points, find_target, target_names

PASSES = "pipeline.passes"
SESSIONS = "pipeline.sessions"


def pass_names() -> list[str]:
    return sorted(entry_points(PASSES))


def find_pass(name: str, where: str) -> PassSpec:
    """The registered pass of that name; ``where`` is the config key that named it (for the error)."""
    if name not in REGISTRY:
        ep = entry_points(PASSES).get(name)
        if ep is None:
            known = ", ".join(pass_names()) or "none (the project is not installed: run `make setup`)"
            raise UserError(f"{where}: {name!r} is not a registered pass; allowed: {known}")
        fn = ep.load()
        if getattr(fn, "pass_spec", None) is None or fn.pass_spec.name != name:
            raise RuntimeError(f"entry point {PASSES}:{name} = {ep.value} is not the pass {name!r}")
    return REGISTRY[name]


def targets() -> dict[str, Target]:
    """hw.target -> the installed target plugin."""
    return {name: find_target(name) for name in target_names()}


def target_schemas() -> dict[str, type]:
    """hw.target -> the hw schema dataclass of that target (registered as ``hw_schema/<target>``)."""
    return {name: target.hw_schema for name, target in targets().items()}


def plugin_modules(target: str) -> list[str]:
    """The modules of a target's plugin: its class's and its session's (their code enters the keys
    of the stages that ask the target)."""
    found = [ep.value.split(":")[0] for group in (TARGETS, SESSIONS) if (ep := entry_points(group).get(target))]
    return list(dict.fromkeys(found))


@functools.lru_cache(maxsize=None)
def project_distribution() -> str:
    """The name of the distribution that installed this engine (the one declaring its passes)."""
    dists = {ep.dist.name for ep in entry_points(PASSES).values() if ep.dist is not None and ep.module.startswith("passes.")}
    return min(dists) if dists else "pipeline"

