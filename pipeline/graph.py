"""The stage graph: built from ``pipeline.stages`` with networkx, checked before anything runs.

A stage is ``{pass: <name>, inputs: {<input>: <stage>}, bind: {<root>: <config root>},
set: {<config path>: <value>}, enabled: <bool>}``. ``bind`` points the config roots its pass
reads at other roots (``{model: draft_model}``: the draft chain of a two-model pipeline); the
stage's *role* is the root its ``model`` is bound to. ``set`` fixes parameters for this stage
alone. ``enabled: false`` (e.g. ``${pipeline.benchmark}``) leaves the stage out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import networkx as nx

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


def build_graph(stages_cfg: Mapping[str, Any]) -> nx.DiGraph:
    """Stages as nodes (attribute ``stage``), edges upstream -> downstream (attribute ``input``)."""
    if not stages_cfg:
        raise UserError("pipeline.stages: {} is not allowed; a pipeline needs at least one stage")
    g = nx.DiGraph()
    disabled = set()
    for order, (name, body) in enumerate(stages_cfg.items()):
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
        stage = Stage(name, spec, dict(body.get("inputs") or {}), bind, dict(body.get("set") or {}))
        g.add_node(name, stage=stage, order=order)
    for name in list(g.nodes):
        for input_name, upstream in g.nodes[name]["stage"].inputs.items():
            if upstream in disabled:
                raise UserError(f"pipeline.stages.{name}.inputs.{input_name}: {upstream!r} is disabled; "
                                f"allowed: an enabled stage")
            if upstream not in g.nodes:
                raise UserError(
                    f"pipeline.stages.{name}.inputs.{input_name}: {upstream!r} is not a stage; "
                    f"allowed: {', '.join(g.nodes)}"
                )
            g.add_edge(upstream, name, input=input_name)
    if not nx.is_directed_acyclic_graph(g):
        cycle = " -> ".join(u for u, _ in nx.find_cycle(g))
        raise UserError(f"pipeline.stages: the stages form a cycle ({cycle}); allowed: an acyclic graph")
    return g


def stage_order(g: nx.DiGraph) -> list[Stage]:
    """Topological order, ties broken by the order the stages are written in."""
    names = nx.lexicographical_topological_sort(g, key=lambda n: g.nodes[n]["order"])
    return [g.nodes[n]["stage"] for n in names]


def mermaid(g: nx.DiGraph) -> str:
    lines = ["flowchart LR"]
    for stage in stage_order(g):
        role = "" if stage.role == "model" else f"<br/>({stage.role})"
        lines.append(f"    {stage.name}[\"{stage.name}<br/>{stage.spec.name}{role}\"]")
    for u, v, data in g.edges(data=True):
        lines.append(f"    {u} -->|{data['input']}| {v}")
    return "\n".join(lines)
