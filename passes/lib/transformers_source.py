"""Facts about transformers' model classes, read from its installed source with ``ast``, never imported (plans stay cheap).

The facts depend only on the installed transformers, whose version is in every key that
uses them. Where the source does not say (a file moved, a literal changed shape), the answer
is None and the caller takes its safe choice.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=1)
def _root() -> Path | None:
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=None)
def _parsed(relative: str) -> ast.Module | None:
    root = _root()
    try:
        return ast.parse((root / relative).read_text()) if root else None
    except (OSError, SyntaxError):
        return None


@functools.lru_cache(maxsize=None)
def _mapping(relative: str, name: str) -> dict[str, str] | None:
    """A module-level ``NAME = OrderedDict([(key, value), ...])`` (or a dict literal) of a transformers file."""
    tree = _parsed(relative)
    for node in tree.body if tree else ():
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and getattr(node.targets[0], "id", None) == name:
            value = node.value.args[0] if isinstance(node.value, ast.Call) and node.value.args else node.value
            try:
                found = ast.literal_eval(value)
            except ValueError:
                return None
            return dict(found) or None
    return None


def causal_lm_classes() -> dict[str, str] | None:
    """model_type -> the class AutoModelForCausalLM builds (its name), or None when the source does not say."""
    return _mapping("models/auto/modeling_auto.py", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES")


def _module_name(model_type: str) -> str:
    special = _mapping("models/auto/auto_mappings.py", "SPECIAL_MODEL_TYPE_TO_MODULE_NAME") or {}
    return special.get(model_type, model_type.replace("-", "_"))


def attention_support(model_type: str | None) -> tuple[bool | None, str]:
    """Whether a family's causal LM takes transformers' attention interface, with no attention sinks
    (what GroupQueryAttention is put in through): (True | False | None when unknown, why)."""
    if not model_type:
        return None, "the model type is not known before the model is loaded"
    cls = (causal_lm_classes() or {}).get(model_type)
    module = _module_name(model_type)
    tree = _parsed(f"models/{module}/modeling_{module}.py")
    if cls is None or tree is None:
        return None, f"transformers' source does not say how {model_type} attends"
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    if cls not in classes:
        return None, f"{cls} is not defined in transformers' modeling_{module}.py"
    if _has_sinks(tree):
        return False, f"{cls} has attention sinks"
    if _class_attribute(classes, cls, "_supports_attention_backend") is True:
        return True, f"{cls} takes transformers' attention interface"
    return False, f"{cls} does not take transformers' attention interface"


def _class_attribute(classes: dict[str, ast.ClassDef], name: str, attribute: str) -> Any:
    """A literal class attribute, looked up through the bases defined in the same file; None if absent."""
    todo, seen = [name], set()
    while todo:
        node = classes.get(todo.pop(0))
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        for stmt in node.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
            if any(getattr(t, "id", None) == attribute for t in targets) and stmt.value is not None:
                try:
                    return ast.literal_eval(stmt.value)
                except ValueError:
                    return None
        todo += [b.id for b in node.bases if isinstance(b, ast.Name)]
    return None


def _has_sinks(tree: ast.Module) -> bool:
    """An attention module that keeps learned sink logits (``self.sinks = ...``), which GroupQueryAttention does not take."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Attribute) and t.attr == "sinks" and getattr(t.value, "id", None) == "self":
                    return True
    return False
