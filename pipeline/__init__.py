"""The engine: config, graph, keys, store, executor and the command-line entry points.

``from pipeline import AutoModelForCausalLM, AutoModel``: the Python API (pipeline/auto.py),
imported on first use so that ``import pipeline`` stays cheap.
"""
import importlib

__all__ = ["AutoModelForCausalLM", "AutoModel"]


def __getattr__(name: str):
    if name in __all__:
        # import_module, not an import statement: every pass's code key reads this package's
        # imports (pipeline.fingerprint), and the API is no code any pass runs
        return getattr(importlib.import_module("pipeline.auto"), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
