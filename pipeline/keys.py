"""Stage keys: H(pass, code fingerprint, dependency versions, canonical params, input digests).

Everything here is computed without importing a pass's heavy libraries: source files are
read through importlib's spec, versions through importlib.metadata. No absolute path
enters a key: path parameters enter by the digest of their content.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import sys
from typing import Any

from pipeline.pass_api import PassSpec
from pipeline.store.digests import DigestMemo, canonical_json, hash_bytes, hash_json


@functools.lru_cache(maxsize=None)
def dist_version(name: str) -> str:
    for candidate in (name, name.replace("_", "-"), name.replace("-", "_")):
        try:
            return importlib.metadata.version(candidate)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "absent"


@functools.lru_cache(maxsize=None)
def code_fingerprint(spec: PassSpec) -> str:
    parts = []
    for path in spec.source_files():
        parts.append(f"{path.parent.name}/{path.name}\0".encode() + path.read_bytes())
    return hash_bytes(b"\1".join(parts))


def canonical_params(params: Any, memo: DigestMemo) -> tuple[dict[str, Any], dict[str, str]]:
    """({config path: value} for the key, {config path: absolute location} for people)."""
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
            from pathlib import Path

            locations[path] = str(Path(value).absolute())
            value = "sha256:" + memo.path(Path(value))
        keyed[path] = value
    return json.loads(canonical_json(keyed)), locations  # tuples -> lists, as records hold them


def ingredients(spec: PassSpec, keyed_params: dict[str, Any], input_digests: dict[str, str]) -> dict[str, Any]:
    return {
        "pass": spec.name,
        "code": code_fingerprint(spec),
        "deps": {d: dist_version(d) for d in spec.deps} | {"python": "%d.%d" % sys.version_info[:2]},
        "params": keyed_params,
        "inputs": dict(input_digests),
    }


def key_of(ingr: dict[str, Any]) -> str:
    return hash_json(ingr)


def explain(old: dict[str, Any] | None, new: dict[str, Any], upstream: dict[str, str] | None = None) -> str:
    """Why a key missed: the ingredients that differ from the latest record's, one phrase each."""
    if old is None:
        return "no earlier build of this stage for this model"
    old_ing = old.get("ingredients", {})
    if old.get("key") == key_of(new):
        return "output missing or damaged in the store"
    changes = []
    if old_ing.get("pass") != new["pass"]:
        changes.append(f"pass: {old_ing.get('pass')} -> {new['pass']}")
    if old_ing.get("code") != new["code"]:
        changes.append(f"code of pass {new['pass']} changed")
    for name in sorted(set(old_ing.get("deps", {})) | set(new["deps"])):
        a, b = old_ing.get("deps", {}).get(name), new["deps"].get(name)
        if a != b:
            changes.append(f"{name}: {a} -> {b}")
    old_p, new_p = _flatten(old_ing.get("params", {})), _flatten(new["params"])
    for name in sorted(set(old_p) | set(new_p)):
        a, b = old_p.get(name, "<unset>"), new_p.get(name, "<unset>")
        if a != b:
            changes.append(f"{name}: {_short(a)} -> {_short(b)}")
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
