"""The stage graph: built from ``pipeline.stages``, checked before anything runs (ordered with the standard library's graphlib).

A stage is ``{pass: <name>, inputs: {<input>: <stage>}, bind: {<root>: <config root>},
set: {<config path>: <value>}, enabled: <bool>}``. ``bind`` points the config roots its pass
reads at other roots (``{model: draft_model}``: the draft chain of a two-model pipeline); the
stage's *role* is the root its ``model`` is bound to. ``set`` fixes parameters for this stage
alone. ``enabled: false`` (e.g. ``${pipeline.benchmark}``) leaves the stage out.
"""
from __future__ import annotations

import graphlib
import heapq
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from pipeline.discovery import find_pass
from pipeline.pass_api import PassSpec, UserError

STAGE_KEYS = ("pass", "inputs", "bind", "set", "enabled")


@dataclass(frozen=True)
class Stage:
    name: str
    spec: PassSpec
    inputs: dict[str, str]  # input name -> upstream stage
    bind: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def role(self) -> str:
        """The config root of the model this stage builds (``model``, ``draft_model``)."""
        return self.bind.get("model", "model")


@dataclass
class StageGraph:
    """Stages by name, in the order they are written, and edges (upstream, downstream, input name)."""

    stages: dict[str, Stage]
    edges: list[tuple[str, str, str]]

    @property
    def names(self) -> list[str]:
        return list(self.stages)

    def consumers(self, name: str) -> list[str]:
        return list(dict.fromkeys(down for up, down, _ in self.edges if up == name))

    def ancestors(self, name: str) -> set[str]:
        found, todo = set(), [name]
        while todo:
            for up in self.stages[todo.pop()].inputs.values():
                if up not in found:
                    found.add(up)
                    todo.append(up)
        return found

    def subgraph(self, names: Iterable[str]) -> "StageGraph":
        keep = set(names)
        return StageGraph({n: s for n, s in self.stages.items() if n in keep},
                          [e for e in self.edges if e[0] in keep and e[1] in keep])


def build_graph(stages_cfg: Mapping[str, Any]) -> StageGraph:
    """The stages and the edges between them; UserError on a bad stage, input or a cycle."""
    if not stages_cfg:
        raise UserError("pipeline.stages: {} is not allowed; a pipeline needs at least one stage")
    stages: dict[str, Stage] = {}
    disabled = set()
    for name, body in stages_cfg.items():
        where = f"pipeline.stages.{name}"
        if not isinstance(body, Mapping) or "pass" not in body:
            raise UserError(f"{where}: {body!r} is not allowed; give {{pass: <name>, inputs: {{...}}}}")
        unknown = sorted(set(body) - set(STAGE_KEYS))
        if unknown:
            raise UserError(f"{where}.{unknown[0]}: not a stage key; allowed keys of a stage: {', '.join(STAGE_KEYS)}")
        enabled = body.get("enabled", True)
        if not isinstance(enabled, bool):
            raise UserError(f"{where}.enabled: {enabled!r} is not allowed; allowed: true | false")
        if not enabled:
            disabled.add(name)
            continue
        spec = find_pass(body["pass"], f"{where}.pass")
        bind = dict(body.get("bind") or {})
        for root, target in bind.items():
            if not isinstance(target, str) or not target:
                raise UserError(f"{where}.bind.{root}: {target!r} is not allowed; allowed: the name of a config root")
        stages[name] = Stage(name, spec, dict(body.get("inputs") or {}), bind, dict(body.get("set") or {}))
    edges = []
    for name, stage in stages.items():
        for input_name, upstream in stage.inputs.items():
            if upstream in disabled:
                raise UserError(f"pipeline.stages.{name}.inputs.{input_name}: {upstream!r} is disabled; "
                                f"allowed: an enabled stage")
            if upstream not in stages:
                raise UserError(f"pipeline.stages.{name}.inputs.{input_name}: {upstream!r} is not a stage; "
                                f"allowed: {', '.join(stages)}")
            edges.append((upstream, name, input_name))
    graph = StageGraph(stages, edges)
    stage_order(graph)  # a cycle is bad input
    return graph


def stage_order(g: StageGraph) -> list[Stage]:
    """Topological order, ties broken by the order the stages are written in (UserError on a cycle)."""
    try:
        graphlib.TopologicalSorter({n: set(s.inputs.values()) for n, s in g.stages.items()}).prepare()
    except graphlib.CycleError as e:
        cycle = " -> ".join(e.args[1])
        raise UserError(f"pipeline.stages: the stages form a cycle ({cycle}); allowed: an acyclic graph") from None
    names = list(g.stages)
    waiting = {n: len(set(s.inputs.values())) for n, s in g.stages.items()}
    ready = [i for i, n in enumerate(names) if waiting[n] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        name = names[heapq.heappop(ready)]
        order.append(g.stages[name])
        for consumer in g.consumers(name):
            waiting[consumer] -= 1
            if waiting[consumer] == 0:
                heapq.heappush(ready, names.index(consumer))
    return order


def mermaid(g: StageGraph) -> str:
    lines = ["flowchart LR"]
    for stage in stage_order(g):
        role = "" if stage.role == "model" else f"<br/>({stage.role})"
        lines.append(f"    {stage.name}[\"{stage.name}<br/>{stage.spec.name}{role}\"]")
    written = {n: i for i, n in enumerate(g.stages)}
    for u, v, input_name in sorted(g.edges, key=lambda e: written[e[0]]):
        lines.append(f"    {u} -->|{input_name}| {v}")
    return "\n".join(lines)
