"""The TorchScript exporter without its copy of the weights: shape inference from the graph's types alone.

Its ONNX shape inference is handed every parameter's values and serializes them into a model
proto (a full copy of the weights, about 1x their size, for nothing: the weights are graph
inputs whose shapes the trace already knows). Handed none, it infers the same graph (checked
by tests/test_streamed_export.py) in a third of the time. Tied to the exporter's internals: if
they move, the export runs unpatched (correct, with the copy).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

PASS = "_jit_pass_onnx_graph_shape_type_inference"


class _WithoutValues:
    """torch._C as the exporter sees it, its shape inference given no parameter values."""

    def __init__(self, real: Any):
        self._real = real

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if name != PASS:
            return attr
        return lambda graph, params, opset: attr(graph, {}, opset)


@contextlib.contextmanager
def shape_inference_without_weights() -> Iterator[None]:
    try:
        from torch.onnx._internal.torchscript_exporter import utils
    except ImportError:
        yield
        return
    real = getattr(utils, "_C", None)
    if real is None or not hasattr(real, PASS):
        yield
        return
    utils._C = _WithoutValues(real)
    try:
        yield
    finally:
        utils._C = real
