"""Shared ONNX file layout of the graph passes: model.onnx + model.onnx.data + io.json."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL = "model.onnx"
WEIGHTS = "model.onnx.data"
IO = "io.json"
# Tensors under this size stay inside model.onnx; the rest go to the one external file.
INLINE_LIMIT = 1024
# Offsets aligned like this let ONNX Runtime memory-map weights instead of copying them.
ALIGNMENT = 4096


def save_ir(model: Any, out: Path) -> None:
    """Write an onnx_ir model as out/model.onnx with its weights in out/model.onnx.data."""
    import onnx_ir as ir

    ir.save(model, out / MODEL, external_data=WEIGHTS, size_threshold_bytes=INLINE_LIMIT,
            alignment=ALIGNMENT, align_threshold=INLINE_LIMIT, max_workers=1)


def load_ir(src: Path) -> Any:
    """Read src/model.onnx with its weights memory-mapped from the external file.

    Store trees are hard links to immutable blobs, and onnx/onnx_ir refuse external data
    with more than one link (a guard against planted links). Our own read-only store is
    not that threat, so the weights are mapped here directly.
    """
    import numpy as np
    import onnx_ir as ir

    model = ir.load(src / MODEL)
    for value in model.graph.initializers.values():
        t = value.const_value
        if isinstance(t, ir.ExternalTensor) and t.size:
            dtype = np.dtype(t.dtype.numpy()).newbyteorder("<")
            array = np.memmap(t.path, dtype=dtype, mode="r", offset=t.offset or 0, shape=tuple(t.shape.numpy()))
            value.const_value = ir.Tensor(array, dtype=t.dtype, name=t.name)
    return model


def io_spec(model: Any, dims: dict[str, int], dynamic_axes: dict[str, dict[int, str]]) -> dict[str, Any]:
    """io.json content: graph inputs/outputs (name, dtype, shape with named axes) and model dims."""

    def value(v: Any) -> dict[str, Any]:
        shape = [d if isinstance(d, int) else str(d) for d in v.shape]
        return {"name": v.name, "dtype": v.dtype.numpy().name, "shape": shape}

    return {
        "inputs": [value(v) for v in model.graph.inputs],
        "outputs": [value(v) for v in model.graph.outputs],
        "dynamic_axes": {name: {str(k): a for k, a in axes.items()} for name, axes in dynamic_axes.items()},
        "dims": dict(dims),
    }


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
