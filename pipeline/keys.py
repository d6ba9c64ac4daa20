"""Stage keys: H(pass, code digests, dependency versions, canonical params, input digests).

Everything here is computed without importing a pass's heavy libraries: the code is every
project module the pass runs (pipeline.fingerprint, read from source), and for a pass that
asks a target (a ``kind="target"`` param) the code of that target's plugin too, which the
pass reaches by entry point, not by import; versions come from importlib.metadata. No
absolute path enters a key: path parameters enter by the digest of their content.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.fingerprint import code_digests
from pipeline.pass_api import PassSpec, UserError, bound_path
from pipeline.store.digests import canonical_json, hash_json
from pipeline.store.memo import DigestMemo
from pipeline.store.records import ActionRecord


@functools.lru_cache(maxsize=None)
def dist_version(name: str) -> str:
    for candidate in (name, name.replace("_", "-"), name.replace("-", "_")):
        try:
            return importlib.metadata.version(candidate)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "absent"


def canonical_params(params: Any, memo: DigestMemo | None) -> tuple[dict[str, Any], dict[str, str]]:
    """({config path: value} for the key, {config path: absolute location} for people, never recorded)."""
    keyed, locations = {}, {}
    for f in dataclasses.fields(params):
        path = f.metadata.get("cfg", f.name)
        kind = f.metadata.get("kind", "value")
        value = getattr(params, f.name)
        if kind == "note":
            continue
        if kind == "flag":
            value = value is not None
        if kind == "path" and value is not None:
            locations[path] = str(Path(value).absolute())
            value = "sha256:" + _content_digest(memo, path, value)
        if kind == "paths" and value:  # {name: path} (e.g. model.adapters): each by content digest, like kind="path"
            locations.update({f"{path}.{name}": str(Path(p).absolute()) for name, p in dict(value).items()})
            value = {name: "sha256:" + _content_digest(memo, f"{path}.{name}", p) for name, p in dict(value).items()}
        keyed[path] = value
    return json.loads(canonical_json(keyed)), locations  # tuples -> lists, as records hold them


def _content_digest(memo: DigestMemo | None, key: str, value: Any) -> str:
    """The digest of a file or folder a param names; UserError naming the key and the file it cannot take."""
    try:
        return (memo or DigestMemo(None)).path(Path(value))
    except (OSError, ValueError) as e:
        reason = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename else str(e)
        raise UserError(f"{key}: {str(value)!r} is not allowed ({reason}); allowed: readable regular files "
                        "(copy a folder of links with cp -rL)") from None


def ingredients(spec: PassSpec, keyed_params: dict[str, Any], input_digests: dict[str, str]) -> dict[str, Any]:
    return {
        "pass": spec.name,
        "code": stage_code(spec, keyed_params),
        "deps": {d: dist_version(d) for d in spec.deps} | {"python": "%d.%d" % sys.version_info[:2]},
        "params": keyed_params,
        "inputs": dict(input_digests),
    }


def stage_code(spec: PassSpec, keyed_params: dict[str, Any]) -> dict[str, str]:
    """{module: digest} of the code a stage runs: its pass's, and its target plugin's (class and session)."""
    from pipeline.discovery import plugin_modules

    code = code_digests(spec.module)
    for f in dataclasses.fields(spec.params):
        if f.metadata.get("kind") == "target" and keyed_params.get(f.metadata["cfg"]):
            for module in plugin_modules(keyed_params[f.metadata["cfg"]]):
                code = {**code, **code_digests(module)}
    return dict(sorted(code.items()))


def key_of(ingr: dict[str, Any]) -> str:
    return hash_json(ingr)


def explain(old: ActionRecord | None, new: dict[str, Any], upstream: dict[str, str] | None = None,
            bind: dict[str, str] | None = None) -> str:
    """Why a key missed: the ingredients that differ from the latest record's, one phrase each.

    Params are keyed by the pass's config paths (``model.seed``), so the same model in two
    roles has one key; ``bind`` names them as the user sees them (``draft_model.seed``).
    """
    if old is None:
        return "no earlier build of this stage for this model"
    old_ing = old.ingredients
    if old.key == key_of(new):
        return "output missing or damaged in the store"
    if old_ing.get("pass") != new["pass"]:  # another pass (another target): its other ingredients do not compare
        return f"pass: {old_ing.get('pass')} -> {new['pass']}"
    changes = []
    old_code, new_code = old_ing.get("code"), new["code"]
    if old_code != new_code:
        if isinstance(old_code, dict):
            changed = sorted(m for m in set(old_code) | set(new_code) if old_code.get(m) != new_code.get(m))
            more = f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
            changes.append(f"code of pass {new['pass']} changed: {', '.join(changed[:3])}{more}")
        else:
            changes.append(f"code of pass {new['pass']} changed")
    for name in sorted(set(old_ing.get("deps", {})) | set(new["deps"])):
        a, b = old_ing.get("deps", {}).get(name), new["deps"].get(name)
        if a != b:
            changes.append(f"{name}: {a} -> {b}")
    old_p, new_p = _flatten(old_ing.get("params", {})), _flatten(new["params"])
    for name in sorted(set(old_p) | set(new_p)):
        a, b = old_p.get(name, "<unset>"), new_p.get(name, "<unset>")
        if a != b:
            changes.append(f"{bound_path(name, bind or {})}: {_short(a)} -> {_short(b)}")
    for name in sorted(set(old_ing.get("inputs", {})) | set(new["inputs"])):
        a, b = old_ing.get("inputs", {}).get(name), new["inputs"].get(name)
        if a != b:
            src = f" ({upstream[name]})" if upstream and name in upstream else ""
            changes.append(f"input {name}{src} changed")
    return "; ".join(changes) or "ingredients equal but key differs"


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model.hf_config": {"hidden_size": 64}} -> {"model.hf_config.hidden_size": 64}."""
    flat = {}
    for k, v in params.items():
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _short(v: Any) -> str:
    s = v if isinstance(v, str) else repr(v)
    if isinstance(v, str) and v.startswith("sha256:"):
        return v[:19]
    return s if len(s) <= 60 else s[:57] + "..."
