"""The code a pass runs: its module and every project module it imports, transitively, read without importing.

Imports are read from the source with ``ast`` (at any depth: passes import their libraries
inside functions), resolved to files of the project's top-level packages, and followed.
Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` too, so those count.
Third-party code is not followed: its version is a dependency of the pass (``deps``).
"""
from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

from pipeline.store.digests import hash_bytes

PROJECT_PACKAGES = ("passes", "pipeline", "runtime")


@functools.lru_cache(maxsize=None)
def _package_dir(top: str) -> Path | None:
    spec = importlib.util.find_spec(top)  # a top-level name: found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def module_file(name: str) -> Path | None:
    """The source file of a project module (``passes.lib.files``), or None if it is not one."""
    parts = name.split(".")
    if parts[0] not in PROJECT_PACKAGES:
        return None
    base = _package_dir(parts[0])
    if base is None:
        return None
    path = base.joinpath(*parts[1:])
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _import_statements(body: list) -> list:
    """Import statements at any depth, walking statement lists only (expressions hold none): cheaper than ast.walk."""
    out = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        for name in ("body", "orelse", "finalbody"):
            sub = getattr(node, name, None)
            if isinstance(sub, list):
                out += _import_statements(sub)
        for nested in (*(getattr(node, "handlers", None) or ()), *(getattr(node, "cases", None) or ())):
            out += _import_statements(nested.body)
    return out


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@functools.lru_cache(maxsize=None)
def _imports(name: str) -> tuple[str, ...]:
    """Project modules ``name`` imports (anywhere in its source), with their parent packages."""
    path = module_file(name)
    package = name if path is not None and path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[str] = []
    for node in _import_statements(ast.parse(path.read_bytes(), str(path)).body):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package upwards
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append(mod)
            found += [f"{mod}.{alias.name}" for alias in node.names]  # `from pkg import module`
    out = []
    for mod in found:
        if module_file(mod) is not None:
            out += [p for p in _parents(mod) if module_file(p) is not None] + [mod]
    return tuple(dict.fromkeys(out))


@functools.lru_cache(maxsize=None)
def closure(module: str) -> tuple[str, ...]:
    """``module``, its parent packages and every project module they import, transitively; sorted."""
    if module_file(module) is None:
        raise RuntimeError(f"module {module} is not a project module ({', '.join(PROJECT_PACKAGES)})")
    seen = set()
    todo = [module, *(p for p in _parents(module) if module_file(p) is not None)]
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo.extend(_imports(mod))
    return tuple(sorted(seen))


@functools.lru_cache(maxsize=None)
def module_digest(module: str) -> str:
    return hash_bytes(module_file(module).read_bytes())


def code_digests(module: str) -> dict[str, str]:
    """{module: sha256 of its source} for the code a pass defined in ``module`` runs. A module of
    another distribution (a plugin's) counts with its own source and the project modules it imports."""
    if module_file(module) is None:
        return _plugin_digests(module)
    return {m: module_digest(m) for m in closure(module)}


@functools.lru_cache(maxsize=None)
def _plugin_digests(module: str) -> dict[str, str]:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise RuntimeError(f"module {module} has no Python source to key")
    source = Path(spec.origin).read_bytes()
    found = {module: hash_bytes(source)}
    for node in _import_statements(ast.parse(source, spec.origin).body):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        if isinstance(node, ast.ImportFrom):
            names += [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if module_file(name) is not None:
                found.update({m: module_digest(m) for m in closure(name)})
    return dict(sorted(found.items()))
