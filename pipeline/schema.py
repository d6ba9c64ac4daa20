"""The config schema, assembled: each top-level node merged from the schemas that declare its keys.

Passes and targets declare the keys they own next to their params (``pass_api.config_schema``);
importing them (through their entry points: cheap by contract) registers those schemas. A node
declared by several schemas (``compile``: the compiled shapes, the encoder's lengths, the LoRA
slots, a target's dry_run) becomes one dataclass with all their keys; a key declared twice is a
programming error, named here. ``hw`` is not merged: each target's hw schema is its own node type,
chosen by the hw preset. The engine adds its own nodes (pipeline/config.py).
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

from pipeline.discovery import PASSES, find_pass, pass_names, targets
from pipeline.pass_api import SCHEMAS

HW = "hw"


@functools.lru_cache(maxsize=None)
def declared_nodes() -> dict[str, type]:
    """Top-level node -> its merged dataclass, for every node a pass or target declares (hw aside)."""
    for name in pass_names():
        find_pass(name, PASSES)  # importing a pass registers the schemas of its module
    targets()
    by_node: dict[str, list[type]] = {}
    for node, schema in SCHEMAS.values():
        if node != HW:
            by_node.setdefault(node, []).append(schema)
    return {node: merged(node, by_node[node]) for node in sorted(by_node)}


def merged(node: str, schemas: list[type]) -> type:
    """One dataclass with every schema's fields, in declaration order; RuntimeError on a key declared twice."""
    if len(schemas) == 1:
        return schemas[0]
    fields: list[tuple[str, Any, Any]] = []
    owner: dict[str, str] = {}
    for schema in schemas:
        types = typing.get_type_hints(schema)  # the declaring module's names: the merged class lives elsewhere
        for f in dataclasses.fields(schema):
            if f.name in owner:
                raise RuntimeError(f"config key {node}.{f.name} is declared twice: by {owner[f.name]} and "
                                   f"{schema.__module__}.{schema.__qualname__} (each key has one owner)")
            owner[f.name] = f"{schema.__module__}.{schema.__qualname__}"
            kept = dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)
            fields.append((f.name, types[f.name], kept))
    cls = dataclasses.make_dataclass(f"{node.title().replace('_', '')}Config", fields)
    cls.__doc__ = f"{node}.*: the keys of " + ", ".join(dict.fromkeys(owner.values()))
    return cls

