"""From a composed config to a checked build plan: every user error is raised here, before
anything runs or is written to the store."""
from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline.config import check_config
from pipeline.graph import Stage, build_graph, stage_order
from pipeline.pass_api import UserError, params_from_config


@dataclass
class BuildPlan:
    stages: list[Stage]
    by_name: dict[str, Stage]
    consumers: dict[str, list[str]]
    params: dict[str, Any]
    force: frozenset[str]
    model: str
    store_root: Path
    graph: Any
    approx_params: int = 0


def load_passes() -> None:
    import passes  # noqa: F401  (registers every pass; cheap by contract)


def prepare(cfg: Any) -> BuildPlan:
    load_passes()
    check_config(cfg)
    g = build_graph(OmegaConf.to_container(cfg.pipeline.stages, resolve=True))
    stages = stage_order(g)
    force = frozenset(cfg.pipeline.force)
    for name in force:
        if name not in g.nodes:
            raise UserError(f"pipeline.force: {name!r} is not a stage; allowed: {', '.join(g.nodes)}")
    params = {}
    for stage in stages:
        try:
            p = params_from_config(stage.spec.params, cfg)
        except (TypeError, ValueError) as exc:
            raise UserError(f"pipeline.stages.{stage.name}: its parameters do not fit pass {stage.spec.name} ({exc})") from exc
        if stage.spec.check:
            stage.spec.check(p)
        params[stage.name] = p
    from passes.model_facts import model_facts

    m = cfg.model
    hf_config = OmegaConf.to_container(m.hf_config, resolve=True) if m.hf_config is not None else None
    facts = model_facts(m.source, m.path, hf_config, hf_id=m.hf_id, revision=m.revision)
    check_config(cfg, max_positions=facts.max_positions)
    resolved: dict[tuple, Any] = {}
    for stage in stages:
        if stage.spec.resolve:
            ident = (stage.spec.name, repr(params[stage.name]))
            if ident not in resolved:
                resolved[ident] = stage.spec.resolve(params[stage.name])
            params[stage.name] = resolved[ident]
    consumers = {s.name: [v for v in g.successors(s.name)] for s in stages}
    return BuildPlan(
        stages=stages, by_name={s.name: s for s in stages}, consumers=consumers, params=params,
        force=force, model=m.name, store_root=Path(cfg.store.root).absolute(), graph=g,
        approx_params=facts.approx_params or 0,
    )


def check_preconditions(plan: BuildPlan, stages: list[Stage]) -> None:
    """Free disk and importable modules for every stage that may run, before the first runs."""
    need_disk = 0
    for stage in stages:
        if stage.spec.needs is None:
            continue
        needs = stage.spec.needs
        if callable(needs):
            needs = needs(plan.params[stage.name])
        for mod in needs.modules:
            if importlib.util.find_spec(mod) is None:
                raise UserError(f"{stage.name}: module {mod!r} is not installed; it is needed to run pass {stage.spec.name} (run `make setup`)")
        need_disk += needs.disk_bytes + int(needs.weight_copies * plan.approx_params * 4)
    probe = plan.store_root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need_disk > free:
        raise UserError(
            f"store.root: {str(plan.store_root)!r} has {free / 2**30:.1f} GiB free; "
            f"the stages to run need about {need_disk / 2**30:.1f} GiB (free space or move store.root)"
        )
