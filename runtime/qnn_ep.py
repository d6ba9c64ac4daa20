"""onnxruntime-qnn's QNN execution provider: registering it, its session options, and what it refuses, by name.

onnxruntime-qnn is a plugin EP (a shared library registered with ONNX Runtime at run time,
then chosen by device). Every session made here disables CPU fallback: a node QNN cannot take
is an error, and ``QnnRefused`` names those nodes (recorded by ONNX Runtime's graph assignment
info on a second, fallback-allowed look at the same graph).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping

EP = "QNNExecutionProvider"
NO_FALLBACK = "session.disable_cpu_ep_fallback"
RECORD_ASSIGNMENT = "session.record_ep_graph_assignment_info"


class QnnRefused(RuntimeError):
    """Nodes that the QNN EP does not take (with CPU fallback disabled, the session cannot be made)."""

    def __init__(self, model: str, nodes: list[tuple[str, str]]):
        self.nodes = nodes
        shown = ", ".join(f"{name} ({op})" for name, op in nodes[:8]) + (f" (+{len(nodes) - 8} more)" if len(nodes) > 8 else "")
        super().__init__(f"QNN cannot take {len(nodes)} node(s) of {Path(model).name} (CPU fallback is disabled): {shown}")


def versions() -> dict[str, str]:
    """{"onnxruntime_qnn": its version, "qnn_sdk": the QNN SDK (QAIRT) it bundles}, read from its package
    without loading it (ImportError when it is not installed)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("onnxruntime_qnn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("QNN: onnxruntime-qnn is not installed (pip install onnxruntime-qnn)")
    info = Path(next(iter(spec.submodule_search_locations))) / "build_and_package_info.py"
    values = {t.id: ast.literal_eval(node.value) for node in ast.parse(info.read_text()).body
              if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    return {"onnxruntime_qnn": str(values["__version__"]), "qnn_sdk": str(values["qnn_version"])}


@functools.lru_cache(maxsize=None)
def devices() -> tuple[Any, ...]:
    """The QNN EP's devices, after registering its library with ONNX Runtime (once per process)."""
    import onnxruntime as ort

    try:
        import onnxruntime_qnn
    except ImportError:
        raise ImportError("QNN: onnxruntime-qnn is not installed (pip install onnxruntime-qnn)") from None
    if not any(d.ep_name == EP for d in ort.get_ep_devices()):
        ort.register_execution_provider_library(EP, onnxruntime_qnn.get_library_path())
    found = tuple(d for d in ort.get_ep_devices() if d.ep_name == EP)
    if not found:
        raise RuntimeError(f"QNN: {EP} registered no device")
    return found


def session_options(provider_options: Mapping[str, str], config: Mapping[str, str] = {}, fallback: bool = False) -> Any:
    """SessionOptions with the QNN EP's devices added; CPU fallback disabled unless ``fallback``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4  # the EP logs every refused node of each partitioning pass as an error
    so.add_session_config_entry(NO_FALLBACK, "0" if fallback else "1")
    for key, value in config.items():
        so.add_session_config_entry(key, str(value))
    so.add_provider_for_devices(list(devices()), {k: str(v) for k, v in provider_options.items()})
    return so


def open_session(model: str | Path, provider_options: Mapping[str, str], config: Mapping[str, str] = {}) -> Any:
    """An InferenceSession of ``model`` on the QNN EP alone; QnnRefused naming the nodes it does not take."""
    import onnxruntime as ort

    so = session_options(provider_options, config)
    try:
        return ort.InferenceSession(str(model), so)
    except Exception as e:
        if "fallback" not in str(e).lower():
            raise
        refused = refused_nodes(model, provider_options)
        if not refused:
            raise
        raise QnnRefused(str(model), refused) from None


def refused_nodes(model: str | Path, provider_options: Mapping[str, str]) -> list[tuple[str, str]]:
    """(name, op type) of the nodes ONNX Runtime assigns to its CPU EP when QNN has first pick."""
    import onnxruntime as ort

    so = session_options(provider_options, {RECORD_ASSIGNMENT: "1"}, fallback=True)
    session = ort.InferenceSession(str(model), so)
    return [(node.name, node.op_type) for sub in session.get_provider_graph_assignment_info()
            if sub.ep_name != EP for node in sub.get_nodes()]
