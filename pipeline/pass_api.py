"""The pass contract: how a pass declares its parameters, dependencies, output kind and hooks.

A pass is a pure function ``fn(inputs, params, out)`` of its declared inputs and
parameters. Pass modules import only the standard library and this module at top
level (heavy libraries are imported inside the function), so the engine can
register every pass and compute every key without loading torch or onnx.
The code a pass runs (its module and the project modules it imports, transitively) is
found by the engine (pipeline.fingerprint); nothing is listed by hand.

A pass declares the config keys it owns with a schema next to its params
(``@config_schema("export")`` on a dataclass), and its params read them with
``cfg_field(Schema, "key")``: each default is written once, in the schema. The target plugin
contract (pipeline.target_api) is re-exported here, so target plugins and the passes that ask
a target import this module alone.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from pipeline.target_api import (  # noqa: F401 - re-exported
    FLOAT16, FLOAT32, MXFP6, MXINT8, HwSchema, Numerics, Target, find_target, schema_default,
)

REGISTRY: dict[str, "PassSpec"] = {}
REQUIRED = "???"  # a schema default a preset must replace (OmegaConf's MISSING)
# Config schemas: "<module>.<class>" -> (top-level node, dataclass). The engine merges the schemas of
# one node into it (pipeline/schema.py); ``hw`` schemas are each target's own.
SCHEMAS: dict[str, tuple[str, type]] = {}


class UserError(Exception):
    """Bad input: reported as one line (``<key>: <value> ... allowed: ...``) and exit code 2, before anything runs."""

    def rebound(self, roots: Mapping[str, str]) -> "UserError":
        """The same error with its leading config key moved to the stage's bound root
        (``model.path: ...`` -> ``draft_model.path: ...``)."""
        text = str(self)
        for root, target in roots.items():
            if root != target and (text.startswith(root + ".") or text.startswith(root + ":")):
                return UserError(target + text[len(root):])
        return self


def not_allowed(key: str, value: Any, allowed: str) -> UserError:
    """The one-line bad-input error: ``<key>: <value> is not allowed; allowed: <allowed>``."""
    return UserError(f"{key}: {value!r} is not allowed; allowed: {allowed}")


class StageFailure(Exception):
    """A stage ran and failed in a way the user must see (exit code 1).

    ``result`` (JSON-able) is kept in the run summary, e.g. a validation mismatch.
    """

    def __init__(self, message: str, result: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.result = dict(result or {})


def config_schema(node: str) -> Callable[[type], type]:
    """Declare keys of the top-level config node ``node`` with a dataclass (types and defaults, each
    written here once). Several schemas may declare keys of one node (``compile``: the compiled
    shapes, the encoder's lengths, a target's dry_run); the engine merges them and refuses a key
    declared twice. A field typed with an Enum takes only its values (OmegaConf says so in one line)."""

    def decorate(cls: type) -> type:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"config_schema({node!r}): {cls.__name__} is not a dataclass")
        cls.__config_node__ = node  # type: ignore[attr-defined]
        SCHEMAS[f"{cls.__module__}.{cls.__qualname__}"] = (node, cls)
        return cls

    return decorate


def cfg_field(path: str | type, default: Any = dataclasses.MISSING, *, kind: str = "value") -> Any:
    """A params field bound to a config path (``"hw.num_cores"``).

    ``cfg_field(Schema, "key")``: the key a schema declares (``config_schema``), with the
    schema's default. ``cfg_field("root.key", REQUIRED)``: a key another pass's schema owns,
    read without importing that pass (its code stays out of this pass's key): the engine always
    gives the value, no second default is written. ``cfg_field("root.key", default)``: a key only
    some targets have (``hw.attention``), with the value meant where it is absent.

    The path's first part is a config *root*; a pipeline stage may bind it to another root
    (``bind: {model: draft_model}`` reads ``model.path`` from ``draft_model.path``).
    ``kind="path"``: a local file or folder; it enters the key by content digest, never by
    its location. ``kind="flag"``: only whether it is set (not None) enters the key, for a
    pass whose output depends on that alone (a graph variant). ``kind="note"``: passed to
    the pass but kept out of the key (must not change the output, e.g. a log level).
    ``kind="target"``: a target's name (``hw.target``); the key holds the code of that target's
    plugin too (its class and its session), for a pass that asks the target (pipeline.target_api).
    """
    if isinstance(path, type):
        schema, key = path, default
        path, default = f"{schema.__config_node__}.{key}", _freeze(plain(schema_default(schema, key)))
    meta = {"cfg": path, "kind": kind}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


class Output(StrEnum):
    """What a stage's output is to the engine: what it gives a build's result, per model role.

    ``tree``: the output's tree in the store (its path, key and size); otherwise the pass's result dict.
    A str enum: ``"package"`` names ``Output.package`` (``goals=("package",)``).
    """

    package = ("package", True)         # BuildResult.packages (package_keys, package_bytes)
    validation = ("validation", False)  # BuildResult.validations
    benchmark = ("benchmark", False)    # BuildResult.benchmarks
    evaluation = ("evaluation", False)  # BuildResult.evaluations

    def __new__(cls, value: str, tree: bool) -> "Output":
        member = str.__new__(cls, value)
        member._value_ = value
        member.tree = tree
        return member


@dataclass(frozen=True)
class Needs:
    """What a stage needs before it starts: free disk in the store, importable modules.

    ``weight_copies``: how many fp32 copies of the model's weights the stage may write; the
    engine turns it into bytes from the parameter count in its role's facts (``approx_params``).
    """

    disk_bytes: int = 0
    modules: tuple[str, ...] = ()
    weight_copies: float = 0.0


@dataclass(frozen=True)
class PassSpec:
    name: str
    fn: Callable[..., Any]
    params: type
    deps: tuple[str, ...]
    materialize: bool | Callable[[Any], bool]
    module: str
    provides: Output | None = None  # what the output is to the engine, or None
    # Optional hooks, all cheap (no heavy imports). ``facts`` is what the role's facts hook
    # returned (the load pass: sizes and limits of the model), or None.
    check: Callable[[Any, Any], None] | None = None        # (params, facts): raise UserError on bad params
    resolve: Callable[[Any], Any] | None = None            # params -> params (e.g. hub rev -> commit)
    needs: Needs | Callable[[Any, Any], Needs] | None = None  # (params, facts) -> preconditions of running
    facts: Callable[[Any], Any] | None = None              # params -> facts about the model this stage loads
    owned: Callable[[Path], Iterable[str]] | None = None   # its output dir -> files its tree holds as their own

    def materialized(self, params: Any) -> bool:
        m = self.materialize
        return bool(m(params)) if callable(m) else bool(m)


def register_pass(
    name: str,
    *,
    params: type,
    deps: tuple[str, ...] = (),
    materialize: bool | Callable[[Any], bool] = True,
    needs: Needs | None = None,
    provides: Output | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(inputs: Mapping[str, Any], params, out: Path | None) -> Any``.

    - ``inputs``: input name -> value. A materialized upstream gives a read-only ``Path``
      to its tree; an in-memory upstream gives whatever its pass returned.
    - materialized pass: ``out`` is an empty directory to fill; it may return a small
      JSON-able dict that is kept in the action record as ``result``.
    - in-memory pass: ``out`` is None; the return value is the output.
    - ``deps``: distributions whose versions enter the key.
    - ``needs``: what running it takes (a ``needs`` hook may compute it from the params).
    - ``provides``: an ``Output`` (``Output.package``, ...), so runs can report it per model role.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in REGISTRY and REGISTRY[name].module != fn.__module__:
            raise RuntimeError(f"pass {name!r} registered twice ({REGISTRY[name].module}, {fn.__module__})")
        spec = PassSpec(name, fn, params, tuple(deps), materialize, fn.__module__,
                        Output(provides) if provides else None, needs=needs)
        REGISTRY[name] = spec
        fn.pass_spec = spec  # type: ignore[attr-defined]
        return fn

    return decorate


def hook(pass_name: str, kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Attach a cheap hook (``check``, ``resolve``, ``needs`` or ``facts``) to a registered pass."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        spec = REGISTRY[pass_name]
        REGISTRY[pass_name] = dataclasses.replace(spec, **{kind: fn})
        return fn

    return decorate


def bound_path(path: str, bind: Mapping[str, str]) -> str:
    """A field's config path with its root replaced by the stage's binding."""
    root, _, rest = path.partition(".")
    target = bind.get(root, root)
    return f"{target}.{rest}" if rest else target


def params_from_config(params_cls: type, cfg: Any, bind: Mapping[str, str] | None = None,
                       overrides: Mapping[str, Any] | None = None) -> Any:
    """A pass's frozen params from the config paths its fields are bound to.

    ``bind``: root -> config root for this stage; ``overrides``: config path -> value set by
    the pipeline for this stage alone (paths as the pass writes them, before binding).
    """
    from omegaconf import OmegaConf

    bind, overrides = bind or {}, overrides or {}
    values = {}
    for f in dataclasses.fields(params_cls):
        path = f.metadata.get("cfg")
        if path is None:
            continue
        if path in overrides:
            node = overrides[path]
        else:
            node = OmegaConf.select(cfg, bound_path(path, bind), default=_ABSENT)
            if node is _ABSENT:
                continue
        if OmegaConf.is_config(node):
            node = OmegaConf.to_container(node, resolve=True)
        values[f.name] = _freeze(plain(node))
    return params_cls(**values)


def plain(v: Any) -> Any:
    """Enum members (typed config values) as their values, inside lists and dicts too: params hold plain data."""
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, (list, tuple)):
        return type(v)(plain(x) for x in v)
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


def _freeze(v: Any) -> Any:
    """Lists become tuples and dicts stay dicts (sorted later), so params hash the same."""
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return {k: _freeze(x) for k, x in v.items()}
    return v


_ABSENT = object()


def config_of(params: Any) -> dict[str, dict[str, Any]]:
    """The params back under their config paths, ``{root: {key: value}}``, as provenance for a
    package: notes (machine-local values like a compiler's path) and unbound fields left out."""
    nested: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(params):
        path, kind = f.metadata.get("cfg"), f.metadata.get("kind", "value")
        if path is None or kind == "note" or "." not in path:
            continue
        root, key = path.split(".", 1)
        value = getattr(params, f.name)
        nested.setdefault(root, {})[key] = _thaw(value)
    return nested


def _thaw(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    if isinstance(v, dict):
        return {k: _thaw(x) for k, x in v.items()}
    return v
