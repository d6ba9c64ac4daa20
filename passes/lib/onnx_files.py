"""The ONNX graph folder the graph passes pass along: model.onnx + model.onnx.data + io.json.

io.json is the graph's IO signature (runtime.package_format.Signature: a role per input and
output). The weights may instead be split over several files (``save_ir(..., max_file_bytes=N)``):
see ``save_ir`` for their names and ``data_files`` to list them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


MODEL = "model.onnx"
WEIGHTS = "model.onnx.data"
# Tensors under this size stay inside model.onnx; the rest go to the external file(s).
INLINE_LIMIT = 1024
# Offsets aligned like this let ONNX Runtime memory-map weights instead of copying them.
ALIGNMENT = 4096


def save_ir(model: Any, out: Path, max_file_bytes: int | None = None, name: str = MODEL) -> None:
    """Write an onnx_ir model as out/model.onnx (or out/``name``) with its weights in external data files.

    ``max_file_bytes=None``: one file, out/model.onnx.data (the layout every pass has always
    written). An int: files of at most that many bytes each (4 KiB alignment padding
    included), filled in initializer order; a tensor larger than the limit gets a file of
    its own. Files are named like Hugging Face shards, ``model-00001-of-00003.onnx.data``,
    ``model-00002-of-00003.onnx.data``, ...; when everything fits in one file it is plain
    ``model.onnx.data``, byte for byte what ``None`` writes. Each tensor's ``location`` in
    model.onnx names its file (``data_files`` lists them). A split save refuses to overwrite
    existing data files: save into an empty folder.
    """
    import onnx_ir as ir

    if max_file_bytes is not None and (isinstance(max_file_bytes, bool) or not isinstance(max_file_bytes, int)
                                       or max_file_bytes <= 0):
        raise ValueError(f"max_file_bytes must be a positive int or None, not {max_file_bytes!r}")
    # onnx_ir shards by initializer order, starting a new file when the next (aligned)
    # tensor would pass the limit; with None it takes its single-file path unchanged.
    ir.save(model, out / name, external_data=WEIGHTS, size_threshold_bytes=INLINE_LIMIT,
            max_shard_size_bytes=max_file_bytes,
            alignment=ALIGNMENT, align_threshold=INLINE_LIMIT, max_workers=1)


def data_files(src: Path, name: str = MODEL) -> list[str]:
    """Names (relative to src) of the external data files src/model.onnx (or src/``name``) refers to, in first-use order.

    ``[WEIGHTS]`` for a model saved unsplit; several shard names for a split save; empty if
    every tensor is inline. Reads only the graph, never the weights.
    """
    import onnx
    from onnx import external_data_helper

    proto = onnx.load(Path(src) / name, load_external_data=False)
    names: dict[str, None] = {}
    for tensor in external_data_helper._get_all_tensors(proto):
        if external_data_helper.uses_external_data(tensor):
            info = external_data_helper.ExternalDataInfo(tensor)
            names[info.location] = None
    return list(names)


def load_ir(src: Path, name: str = MODEL) -> Any:
    """Read src/model.onnx (or src/``name``) with its weights memory-mapped from the external file(s).

    Store trees are hard links to immutable blobs, and onnx/onnx_ir refuse external data
    with more than one link (a guard against planted links). Our own read-only store is
    not that threat, so the weights are mapped here directly.
    """
    import numpy as np
    import onnx_ir as ir

    model = ir.load(src / name)
    for value in model.graph.initializers.values():
        t = value.const_value
        if isinstance(t, ir.ExternalTensor) and t.size:
            dtype = np.dtype(t.dtype.numpy()).newbyteorder("<")
            array = np.memmap(t.path, dtype=dtype, mode="r", offset=t.offset or 0, shape=tuple(t.shape.numpy()))
            value.const_value = ir.Tensor(array, dtype=t.dtype, name=t.name)
    return model


def io_shapes(model: Any) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """({name: shape with named axes}, {name: numpy dtype name}) of the graph's inputs and outputs."""
    shapes, dtypes = {}, {}
    for v in (*model.graph.inputs, *model.graph.outputs):
        shapes[v.name] = [d if isinstance(d, int) else str(d) for d in v.shape]
        dtypes[v.name] = v.dtype.numpy().name
    return shapes, dtypes
