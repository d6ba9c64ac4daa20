"""The stage graph: built from ``pipeline.stages`` with networkx, checked before anything runs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import networkx as nx

from pipeline.pass_api import REGISTRY, PassSpec, UserError


@dataclass(frozen=True)
class Stage:
    name: str
    spec: PassSpec
    inputs: dict[str, str]  # input name -> upstream stage


def build_graph(stages_cfg: Mapping[str, Any]) -> nx.DiGraph:
    """Stages as nodes (attribute ``stage``), edges upstream -> downstream (attribute ``input``)."""
    if not stages_cfg:
        raise UserError("pipeline.stages: {} is not allowed; a pipeline needs at least one stage")
    g = nx.DiGraph()
    for order, (name, body) in enumerate(stages_cfg.items()):
        if not isinstance(body, Mapping) or "pass" not in body:
            raise UserError(f"pipeline.stages.{name}: {body!r} is not allowed; give {{pass: <name>, inputs: {{...}}}}")
        pass_name = body["pass"]
        if pass_name not in REGISTRY:
            raise UserError(
                f"pipeline.stages.{name}.pass: {pass_name!r} is not a registered pass; "
                f"allowed: {', '.join(sorted(REGISTRY))}"
            )
        inputs = dict(body.get("inputs") or {})
        g.add_node(name, stage=Stage(name, REGISTRY[pass_name], inputs), order=order)
    for name in list(g.nodes):
        for input_name, upstream in g.nodes[name]["stage"].inputs.items():
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
        lines.append(f"    {stage.name}[\"{stage.name}<br/>{stage.spec.name}\"]")
    for u, v, data in g.edges(data=True):
        lines.append(f"    {u} -->|{data['input']}| {v}")
    return "\n".join(lines)
