"""The house rules of imports, read from the source (ast): who may import whom, and what stays cheap."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import networkx as nx

from conftest import ROOT

PROJECT = ("pipeline", "passes", "runtime")
HEAVY = ("torch", "transformers", "onnx", "onnxruntime", "onnxscript", "onnx_ir", "numpy", "safetensors", "gguf",
         "huggingface_hub", "tokenizers", "accelerate")


def modules() -> dict[str, Path]:
    out = {}
    for top in PROJECT:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, top_level_only: bool) -> set[str]:
    """Absolute names of the modules imported (``from a import b`` gives a.b when that is a module, else a)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = modules()
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
            found |= subs or {base}
    return found


def project_graph(top_level_only: bool) -> nx.DiGraph:
    known = modules()
    g = nx.DiGraph()
    for name, path in known.items():
        g.add_node(name)
        for mod in imports(name, path, top_level_only):
            if mod in known and mod != name:
                g.add_edge(name, mod)
    return g


def test_no_import_cycles_between_project_modules():
    for top_level_only in (True, False):
        cycles = list(nx.simple_cycles(project_graph(top_level_only)))
        assert not cycles, ("top-level" if top_level_only else "any") + f" imports form cycles: {cycles[:5]}"


def test_runtime_imports_neither_passes_nor_pipeline():
    for name, path in modules().items():
        if name.split(".")[0] == "runtime":
            bad = {m for m in imports(name, path, False) if m.split(".")[0] in ("passes", "pipeline")}
            assert not bad, f"{name} imports {sorted(bad)}"


def test_the_engine_never_imports_passes():
    for name, path in modules().items():
        if name.split(".")[0] == "pipeline":
            bad = {m for m in imports(name, path, False) if m.split(".")[0] == "passes"}
            assert not bad, f"{name} imports {sorted(bad)} (passes are found by name: pipeline/discovery.py)"


def cheap_modules() -> set[str]:
    """What a fully cached run may load: the engine, the modules its entry points name (passes and
    targets), their parent packages and what they import at top level, transitively."""
    import tomllib

    known = modules()
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    todo = [n for n in known if n.split(".")[0] == "pipeline"]
    todo += [value.split(":")[0] for group in ("pipeline.passes", "pipeline.targets") for value in groups[group].values()]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in known:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += [m for m in imports(name, known[name], True) if m in known]
    return seen


def test_what_a_cached_run_loads_imports_no_heavy_library_at_top_level():
    """The engine, every pass and target module and what they import at top level: heavy
    libraries only inside functions (gqa.py, imported by a pass when it runs, may import torch)."""
    cheap = cheap_modules()
    assert {"pipeline.executor", "passes.export", "passes.targets.ai100.compile", "runtime.package_format"} <= cheap
    for name in sorted(cheap):
        heavy = {m for m in imports(name, modules()[name], True) if m.split(".")[0] in HEAVY}
        assert not heavy, f"{name} imports {sorted(heavy)} at module top level"


def test_passes_use_only_the_pass_contract_of_the_engine():
    for name, path in modules().items():
        if name.split(".")[0] == "passes":
            engine = {m for m in imports(name, path, False) if m.split(".")[0] == "pipeline"}
            assert engine <= {"pipeline.pass_api"}, f"{name} imports {sorted(engine)}"


def test_every_module_has_a_docstring_line():
    for name, path in modules().items():
        assert ast.get_docstring(ast.parse(path.read_text())), f"{name} has no module docstring"


def test_the_rules_hold_for_real_imports_too():
    """Importing the engine and all pass modules (as a cached run may) loads no heavy library."""
    import subprocess

    code = ("import sys, pipeline.api, pipeline.callbacks, pipeline.store.maintenance; "
            "from pipeline.config import register; register(); "
            "from pipeline.discovery import find_pass, pass_names; [find_pass(n, 'x') for n in pass_names()]; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr
