"""The pass contract: how a pass declares its parameters, dependencies and output kind.

A pass is a pure function ``fn(inputs, params, out)`` of its declared inputs and
parameters. Pass modules import only the standard library and this module at top
level (heavy libraries are imported inside the function), so the engine can
register every pass and compute every key without loading torch or onnx.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

REGISTRY: dict[str, "PassSpec"] = {}


class UserError(Exception):
    """Bad input: reported as one line and exit code 2, before anything runs."""


class StageFailure(Exception):
    """A stage ran and failed in a way the user must see (exit code 1).

    ``result`` (JSON-able) is kept in the run summary, e.g. a validation mismatch.
    """

    def __init__(self, message: str, result: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.result = dict(result or {})


def cfg_field(path: str, default: Any = dataclasses.MISSING, *, kind: str = "value") -> Any:
    """A params field bound to a config path (``"hw.num_cores"``).

    ``kind="path"``: a local file or folder; it enters the key by content digest, never by
    its location. ``kind="flag"``: only whether it is set (not None) enters the key, for a
    pass whose output depends on that alone (a graph variant). ``kind="note"``: passed to
    the pass but kept out of the key (must not change the output, e.g. a log level).
    """
    meta = {"cfg": path, "kind": kind}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Needs:
    """What a stage needs before it starts: free disk in the store, importable modules.

    ``weight_copies``: how many fp32 copies of the model's weights the stage may write; the
    engine turns it into bytes from the model's parameter count.
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
    code: tuple[str, ...] = ()
    # Optional hooks, all cheap (no heavy imports):
    check: Callable[[Any], None] | None = None          # raise UserError on bad params
    resolve: Callable[[Any], Any] | None = None         # params -> params (e.g. hub rev -> commit)
    needs: Needs | Callable[[Any], Needs] | None = None  # preconditions of running

    def materialized(self, params: Any) -> bool:
        m = self.materialize
        return bool(m(params)) if callable(m) else bool(m)

    def source_files(self) -> list[Path]:
        """Source files whose text is the pass's code fingerprint, found without importing."""
        files = []
        for mod in (self.module, *self.code):
            spec = importlib.util.find_spec(mod)
            if spec is None or spec.origin is None:
                raise RuntimeError(f"pass {self.name}: module {mod} not found")
            origin = Path(spec.origin)
            if origin.name == "__init__.py":  # a package: every module in it
                files.extend(sorted(origin.parent.rglob("*.py")))
            else:
                files.append(origin)
        return files


def register_pass(
    name: str,
    *,
    params: type,
    deps: tuple[str, ...] = (),
    materialize: bool | Callable[[Any], bool] = True,
    code: tuple[str, ...] = (),
    needs: Needs | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(inputs: Mapping[str, Any], params, out: Path | None) -> Any``.

    - ``inputs``: input name -> value. A materialized upstream gives a read-only ``Path``
      to its tree; an in-memory upstream gives whatever its pass returned.
    - materialized pass: ``out`` is an empty directory to fill; it may return a small
      JSON-able dict that is kept in the action record as ``result``.
    - in-memory pass: ``out`` is None; the return value is the output.
    - ``deps``: distributions whose versions enter the key.
    - ``code``: extra modules (or packages) whose source enters the code fingerprint.
    - ``needs``: what running it takes (a ``needs`` hook may compute it from the params).
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in REGISTRY and REGISTRY[name].fn.__module__ != fn.__module__:
            raise RuntimeError(f"pass {name!r} registered twice")
        spec = PassSpec(name, fn, params, tuple(deps), materialize, fn.__module__, tuple(code), needs=needs)
        REGISTRY[name] = spec
        fn.pass_spec = spec  # type: ignore[attr-defined]
        return fn

    return decorate


def hook(pass_name: str, kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Attach a cheap hook (``check``, ``resolve`` or ``needs``) to a registered pass."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        spec = REGISTRY[pass_name]
        REGISTRY[pass_name] = dataclasses.replace(spec, **{kind: fn})
        return fn

    return decorate


def params_from_config(params_cls: type, cfg: Any) -> Any:
    """Build a pass's frozen params from the config paths its fields are bound to."""
    from omegaconf import OmegaConf

    values = {}
    for f in dataclasses.fields(params_cls):
        path = f.metadata.get("cfg")
        if path is None:
            continue
        node = OmegaConf.select(cfg, path, default=_ABSENT)
        if node is _ABSENT:
            continue
        if OmegaConf.is_config(node):
            node = OmegaConf.to_container(node, resolve=True)
        values[f.name] = _freeze(node)
    return params_cls(**values)


def _freeze(v: Any) -> Any:
    """Lists become tuples and dicts stay dicts (sorted later), so params hash the same."""
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return {k: _freeze(x) for k, x in v.items()}
    return v


_ABSENT = object()
