"""The configuration reference, generated from the config schemas (``python tools/docs/config_reference.py``).

Every key comes from a dataclass the engine composes (pipeline/schema.py ``declared_nodes()``, the
engine's own nodes in pipeline/config.py, each target's hw schema, each entry point's keys); its
type and default from the dataclass, its meaning from the comment on the field's line (or the
comment lines just above it) in the schema's source, and the value the default run composes from
conf/ when a preset changes it. A key added to a schema appears here with no other edit.
"""
from __future__ import annotations

import dataclasses
import enum
import inspect
import io
import re
import sys
import tokenize
import typing
from pathlib import Path
from typing import Any, Iterator

from omegaconf import OmegaConf

from pipeline.pass_api import plain

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Key:
    path: str
    type: str
    default: str
    meaning: str
    preset: str | None = None  # the value the default run composes, where conf/ changes the schema's


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment in the class source (trailing, or the comment lines just above it)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        m = re.match(r"^    (\w+)\s*:", line)
        if not m:
            continue
        above = []
        prev = number - 1
        while prev >= 1 and lines[prev - 1].strip().startswith("#"):
            above.insert(0, comments[prev])
            prev -= 1
        parts = [*above, comments.get(number, "")] if not line.strip().startswith("#") else above
        found[m.group(1)] = " ".join(p for p in parts if p)
    return found


def type_name(tp: Any) -> str:
    """A short, readable name of a field's type (an Enum lists its values)."""
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " \\| ".join(f"`{m.value}`" for m in tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return f"{type_name(rest[0])} or null" if len(rest) == 1 else " or ".join(map(type_name, args))
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(map(type_name, args))}]"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "???"


def show(value: Any) -> str:
    value = plain(value)
    if isinstance(value, tuple):
        value = list(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "???":
        return "required"
    text = str(value).replace("|", "\\|")
    return f"`{text}`" if text else '`""`'


def walk(prefix: str, cls: type) -> Iterator[Key]:
    """Every leaf key of a schema dataclass, nested dataclasses flattened into dotted paths."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from walk(path, tp)
            continue
        yield Key(path, type_name(tp), show(default_of(f)), comments.get(f.name, ""))


def sections() -> list[tuple[str, str, list[Key]]]:
    """(title, what it is, keys) per part of the config: each node, each target's hw, each entry point."""
    from pipeline.config import ENTRY_KEYS, PipelineConfig, StoreConfig, SweepConfig, register
    from pipeline.discovery import targets
    from pipeline.pass_api import SCHEMAS
    from pipeline.schema import HW, declared_nodes

    register("config")
    composed = composed_values("config")
    out = []
    nodes = {node: [cls for n, cls in SCHEMAS.values() if n == node] for node in declared_nodes()}
    nodes.update({"store": [StoreConfig], "sweep": [SweepConfig], "pipeline": [PipelineConfig]})
    for node in sorted(nodes):
        keys = [k for cls in nodes[node] for k in walk(node, cls)]
        docs = " ".join(first_line(cls) for cls in nodes[node])
        out.append((f"`{node}`", docs, with_presets(keys, composed)))
    for name, target in sorted(targets().items()):
        keys = list(walk(HW, target.hw_schema))
        keys = with_presets(keys, composed) if composed.get("hw.target") == name else keys
        out.append((f"`hw` of the `{name}` target", first_line(target.hw_schema), keys))
    for entry, (_, cls) in ENTRY_KEYS.items():
        if cls is not None:
            out.append((f"`python -m pipeline.{entry}`", first_line(cls), list(walk("", cls))))
    return out


def first_line(cls: type) -> str:
    """The docstring's first paragraph (none for a dataclass without one: its generated signature)."""
    doc = cls.__dict__.get("__doc__") or ""
    if doc.startswith(f"{cls.__name__}("):
        return ""
    return inspect.cleandoc(doc).split("\n\n")[0].replace("\n", " ")


def composed_values(config_name: str) -> dict[str, str]:
    """Dotted key -> the value the default run composes (interpolations shown as written)."""
    from pipeline.api import compose

    cfg = OmegaConf.to_container(compose([], config_name), resolve=False)
    flat: dict[str, str] = {}

    def visit(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node and prefix.count(".") < 1 or isinstance(node, dict) and prefix == "":
            for k, v in node.items():
                visit(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = show(node)
    visit("", cfg)
    return flat


def with_presets(keys: list[Key], composed: dict[str, str]) -> list[Key]:
    for key in keys:
        value = composed.get(key.path)
        if value is not None and value != key.default:
            key.preset = value if len(value) <= 80 else "set by its group in `conf/`"
    return keys


def groups() -> list[tuple[str, list[str], str]]:
    """(group, its presets in conf/, the default run's choice)."""
    common = OmegaConf.load(ROOT / "conf" / "common.yaml")
    chosen = {}
    for item in common.get("defaults", []):
        if isinstance(item, dict) or OmegaConf.is_dict(item):
            for k, v in dict(item).items():
                chosen[str(k).split("@")[0].lstrip("/")] = v
    out = []
    for folder in sorted(p for p in (ROOT / "conf").iterdir() if p.is_dir()):
        presets = sorted(p.stem for p in folder.glob("*.yaml"))
        out.append((folder.name, presets, show(chosen.get(folder.name))))
    return out


def render() -> str:
    lines = ["# Configuration reference", "",
             "Generated from the config schemas by `tools/docs/config_reference.py` when the site is built:",
             "every key, its type, its default and its meaning (the comment on the schema's field). Set any",
             "key on the command line (`key=value`); `python -m pipeline --cfg job` prints the composed config.",
             "A *preset* value is the one `conf/` gives the default run in place of the schema's default.", "",
             "## Config groups (`conf/`)", "", "| group | presets | default run |", "| --- | --- | --- |"]
    for group, presets, chosen in groups():
        lines.append(f"| `{group}` | {', '.join(f'`{p}`' for p in presets)} | {chosen} |")
    count = 0
    for title, doc, keys in sections():
        lines += ["", f"## {title}", ""]
        if doc:
            lines += [doc, ""]
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for k in keys:
            default = k.default + (f" (preset: {k.preset})" if k.preset else "")
            lines.append(f"| `{k.path}` | {k.type} | {default} | {k.meaning.replace('|', chr(92) + '|')} |")
            count += 1
    lines += ["", f"{count} keys.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
