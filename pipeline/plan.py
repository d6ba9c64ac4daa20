"""From a composed config to a checked build plan: every user error is raised here, before
anything runs or is written to the store.

Each stage's params are read from its bound config roots; then, stage by stage in order, its
pass's ``check`` hook sees them with the facts of the stage's model role (from the ``facts``
hook of the role's load stage, which comes first), and ``resolve`` fills what the key needs
(a hub commit, a compiler version). A UserError from a stage bound to another root names
that root's key (``draft_model.path``). Once a role's facts are known, the target chooses
its ``auto`` hw values for that model (``Target.choose``: ``hw.attention=auto``); the later
stages of the role read the choice, and the plan's ``notes`` say what was chosen and why.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config import CONF_DIR, check_config
from pipeline.graph import Stage, build_graph, stage_order
from pipeline.pass_api import Output, UserError, params_from_config
from pipeline.target_api import find_target
from pipeline.store.files import free_bytes
from pipeline.store.maintenance import human


@dataclass
class BuildPlan:
    stages: list[Stage]
    by_name: dict[str, Stage]
    consumers: dict[str, list[str]]
    params: dict[str, Any]
    force: frozenset[str]
    models: dict[str, str]        # role -> model name (model.name, draft_model.name)
    facts: dict[str, Any]         # role -> facts about its model (from the load pass's facts hook)
    store_root: Path
    memo: str | None
    graph: Any
    remote: dict[str, Any] | None = None  # store.remote: {"url", "options", "push"} (pipeline.store.remote)
    notes: list[str] = field(default_factory=list)  # what the plan chose (a target's auto hw values), one line each

    def materialized(self, stage: Stage) -> bool:
        """The stage's output is a tree in the store (else a value in memory)."""
        return stage.spec.materialized(self.params[stage.name])


def type_mismatch(exc: BaseException) -> str | None:
    """OmegaConf's "Value 'x' of type 'str' could not be converted to Integer" (given directly, or
    met through an interpolation), or "Invalid value 'x', expected one of [a, b]" (an Enum key), as
    'key: 'x' is not allowed; allowed: ...', or None."""
    first = str(exc).split("\n")[0]
    key = re.sub(r"\[\d+\]$", "", getattr(exc, "full_key", None) or "config")  # an item of a list: the list's key
    if m := re.search(r"Invalid value '(.*)', expected one of \[(.*)\]", first):
        return f"{key}: {m.group(1)!r} is not allowed; allowed: {' | '.join(m.group(2).split(', '))}"
    m = re.search(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", first)
    if m:
        value, kind = m.group(1), m.group(2)
    elif m := re.search(r"Cannot convert '\w+' to (\w+): '(.*)'", first):  # a list or mapping where a scalar goes
        value, kind = m.group(2), m.group(1)
    else:
        return None
    return f"{key}: {value!r} is not allowed; allowed: a value of type {kind}"


def config_error(exc: BaseException) -> str:
    """An OmegaConf error met while reading the config (a value of the wrong type, an
    interpolation that does not resolve) as one line naming the key."""
    key = getattr(exc, "full_key", None) or "config"
    text = " ".join(str(exc).split("\n")[0].split()) or type(exc).__name__
    return type_mismatch(exc) or f"{key}: {text}; allowed: a value of the key's type, or an interpolation that resolves"


def prepare(cfg: Any, resolve: bool = True, goals: Sequence[Output | str] = (), roles: Sequence[str] = ("model",)) -> BuildPlan:
    """The checked plan; ``resolve=False`` checks only (no hub lookups, no compiler discovery).

    ``goals``: build only the stages that provide these (``Output.package``, or ``"package"``) for
    ``roles`` (the ``model``; speculative decoding with a draft: both), and what they need
    (``python -m pipeline.infer`` needs no reference and no validation).
    """
    try:
        return _prepare(cfg, resolve, goals, roles)
    except OmegaConfBaseException as exc:
        raise UserError(config_error(exc)) from None


def _prepare(cfg: Any, resolve: bool, goals: Sequence[Output | str], roles: Sequence[str]) -> BuildPlan:
    check_config(cfg)
    g = build_graph(OmegaConf.to_container(cfg.pipeline.stages, resolve=True))
    if goals:
        wanted = [n for n, s in g.stages.items() if s.spec.provides in goals and s.role in roles]
        if not wanted:
            raise UserError(f"pipeline.stages: no stage provides {' or '.join(goals)} for the model; "
                            f"allowed: a pipeline with a {goals[0]} stage")
        g = g.subgraph(set(wanted).union(*(g.ancestors(n) for n in wanted)))
    stages = stage_order(g)
    given = cfg.pipeline.force
    if not OmegaConf.is_list(given) or not all(isinstance(name, str) for name in given):
        raise UserError(f"pipeline.force: {given!r} is not allowed; allowed: a list of stage names ({', '.join(g.stages)})")
    force = frozenset(given)
    for name in force:
        if name not in g.stages and not goals:
            raise UserError(f"pipeline.force: {name!r} is not a stage; allowed: {', '.join(g.stages)}")
    models: dict[str, str] = {}
    for stage in stages:
        node = OmegaConf.select(cfg, stage.role, default=None)
        if node is None:
            presets = ", ".join(sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
            raise UserError(f"{stage.role}: not set; stage {stage.name} builds it; allowed: {stage.role}=<preset> ({presets})")
        models[stage.role] = str(node.get("name", stage.role))
    params: dict[str, Any] = {}
    facts: dict[str, Any] = {}
    chosen: dict[str, dict[str, Any]] = {}  # role -> {hw path: the target's choice for that model}
    notes: list[str] = []
    resolved: dict[tuple, Any] = {}
    for stage in stages:
        try:
            p = params_from_config(stage.spec.params, cfg, stage.bind, {**chosen.get(stage.role, {}), **stage.overrides})
        except OmegaConfBaseException:
            raise
        except (TypeError, ValueError) as exc:
            detail = " ".join(str(exc).split())
            raise UserError(f"pipeline.stages.{stage.name}: its parameters do not fit pass {stage.spec.name} ({detail})") from exc
        try:
            try:
                if stage.spec.check:
                    stage.spec.check(p, facts.get(stage.role))
                if stage.spec.facts and stage.role not in facts:
                    facts[stage.role] = stage.spec.facts(p)
                    chosen[stage.role] = _choices(cfg, stage.role, facts[stage.role], notes)
            except (TypeError, ValueError, AttributeError, KeyError, IndexError, OSError) as exc:
                # a value no check foresaw (a list for a name, a dict for a number, a path too long): still one line
                detail = " ".join(str(exc).split())
                detail = detail if len(detail) <= 300 else detail[:300] + "..."
                raise UserError(f"pipeline.stages.{stage.name}: pass {stage.spec.name} cannot take its parameters "
                                f"({type(exc).__name__}: {detail}); allowed: values of the types the presets give") from exc
            if resolve and stage.spec.resolve:  # the same params resolve once (the same model in two roles)
                ident = (stage.spec.name, repr(p))
                if ident not in resolved:
                    resolved[ident] = stage.spec.resolve(p)
                p = resolved[ident]
        except UserError as exc:
            raise exc.rebound(stage.bind) from None
        params[stage.name] = p
    consumers = {s.name: g.consumers(s.name) for s in stages}
    return BuildPlan(
        stages=stages, by_name={s.name: s for s in stages}, consumers=consumers, params=params, force=force,
        models=models, facts=facts, store_root=Path(cfg.store.root).absolute(), memo=cfg.store.memo, graph=g,
        remote=_remote(cfg.store), notes=notes,
    )


def _choices(cfg: Any, role: str, facts: Any, notes: list[str]) -> dict[str, Any]:
    """The target's choices of hw values for the model of ``role`` ({"hw.<key>": value}), noted."""
    hw = OmegaConf.to_container(cfg.hw, resolve=True)
    out = {}
    for key, (value, why) in find_target(cfg.hw.target).choose(hw, facts).items():
        out[f"hw.{key}"] = value
        who = "" if role == "model" else f" ({role})"
        notes.append(f"hw.{key}{who}: {hw.get(key)} -> {value} ({why})")
    return out


def check_preconditions(plan: BuildPlan, stages: list[Stage]) -> None:
    """Free disk and importable modules for every stage that may run, before the first runs."""
    need_disk = 0
    for stage in stages:
        if stage.spec.needs is None:
            continue
        facts = plan.facts.get(stage.role)
        needs = stage.spec.needs
        if callable(needs):
            needs = needs(plan.params[stage.name], facts)
        for mod in needs.modules:
            if importlib.util.find_spec(mod) is None:
                raise UserError(f"{stage.name}: module {mod!r} is not installed; it is needed to run pass {stage.spec.name} (run `make setup`)")
        weights = int(needs.weight_copies * (getattr(facts, "approx_params", None) or 0) * 4)
        need_disk += needs.disk_bytes + weights
    free = free_bytes(plan.store_root)
    if need_disk > free:
        raise UserError(
            f"store.root: {str(plan.store_root)!r} has {human(free)} free; "
            f"the stages to run need about {human(need_disk)} (free space or move store.root)"
        )


def _remote(store: Any) -> dict[str, Any] | None:
    """store.remote (an fsspec URL) with its options and push flag; one-line UserError on a bad one."""
    url = store.get("remote")
    if not url:
        return None
    from pipeline.store.remote import check_url

    try:
        check_url("store.remote", url)
    except ValueError as e:
        raise UserError(f"{e}, or null") from None
    options = OmegaConf.to_container(store.remote_options, resolve=True) if store.get("remote_options") else {}
    return {"url": url, "options": options, "push": bool(store.get("push"))}

