"""Rewrite `fp16_clip`: clip fp32 constants to the fp16 finite range, for fp16 targets.

A target that converts the graph to fp16 (AI 100 ``-convert-to-fp16``) turns an fp32
constant beyond +-65504 into +-inf, which poisons whatever it touches (0 * inf = NaN). So
every fp32 constant is clipped to [-65504, 65504] first: initializers (also of subgraphs),
tensor attributes of every node (Constant's ``value``, ConstantOfShape's ``value``, ...) and
Constant's ``value_float(s)``, in the main graph, its subgraphs and the model-local
functions. -inf and +inf stay as they are (attention masks are built from them) and NaN
stays NaN; only finite values out of range move. Like the reference library's
FP16ClipTransform, but keeping +inf too and never copying a tensor that needs no change.

Tensors are checked in chunks (min/max, then an exact mask only where those say "maybe"),
so a memory-mapped weight is only read, chunk by chunk, and never copied. A tensor with something to clip
is replaced by a new in-memory ``ir.Tensor``: the old one (maybe a read-only memmap of the
store) is never written to.
"""
from __future__ import annotations

from typing import Any

FP16_MAX = 65504.0  # np.finfo(np.float16).max, exact in fp32
# Elements per chunk (4 MiB of fp32): bounds the temporaries of the checks and of the clip.
CHUNK = 1 << 20


def clip_fp16(model: Any) -> int:
    """Clip the model's fp32 constants in place; return how many tensors changed."""
    import numpy as np
    import onnx_ir as ir

    clipper = _Clipper()
    graphs = [model.graph, *model.graph.subgraphs()]
    for function in model.functions.values():
        graphs += [function.graph, *function.graph.subgraphs()]

    for graph in graphs:
        for value in graph.initializers.values():
            value.const_value = clipper.tensor(value.const_value)
        for node in graph:  # top-level nodes only: the subgraphs are in `graphs` themselves
            constant = node.op_type == "Constant" and node.domain in ("", "ai.onnx")
            for name, attr in list(node.attributes.items()):
                new = clipper.attr(attr, constant)
                if new is not None:
                    node.attributes[name] = new
                    if constant and new.type != ir.AttributeType.TENSOR and node.outputs[0].const_value is not None:
                        node.outputs[0].const_value = ir.tensor(np.asarray(new.value, dtype=np.float32))

    if clipper.new_tensors:  # values known from the old tensors (constant propagation of Constant nodes)
        for graph in graphs:
            for node in graph:
                for output in node.outputs:
                    new = clipper.new_tensors.get(id(output.const_value))
                    if new is not None:
                        output.const_value = new
    return clipper.changed


class _Clipper:
    def __init__(self) -> None:
        self.seen: dict[int, Any] = {}         # id(tensor) -> the tensor to use (itself if in range)
        self.new_tensors: dict[int, Any] = {}  # id(old tensor) -> its clipped replacement
        self.changed = 0
        self._keep: list[Any] = []             # the old tensors, so that their ids stay unique

    def tensor(self, tensor: Any) -> Any:
        """The tensor to use instead of ``tensor``: itself when nothing is out of range."""
        import onnx_ir as ir

        if tensor is None or tensor.dtype != ir.DataType.FLOAT:
            return tensor
        key = id(tensor)
        if key not in self.seen:
            self._keep.append(tensor)
            array = _clipped(tensor.numpy())
            if array is None:
                self.seen[key] = tensor
            else:
                new = ir.Tensor(array, dtype=ir.DataType.FLOAT, name=tensor.name, doc_string=tensor.doc_string)
                self.seen[key] = self.new_tensors[key] = new
                self.changed += 1
        return self.seen[key]

    def attr(self, attr: Any, constant: bool) -> Any:
        """A replacement for an attribute holding an out-of-range fp32 constant, else None."""
        import onnx_ir as ir

        if attr.is_ref() or attr.value is None:
            return None
        kind = attr.type
        if kind == ir.AttributeType.TENSOR:
            new = self.tensor(attr.value)
            return None if new is attr.value else ir.Attr(attr.name, kind, new, doc_string=attr.doc_string)
        if kind == ir.AttributeType.TENSORS:
            tensors = [self.tensor(t) for t in attr.value]
            if all(new is old for new, old in zip(tensors, attr.value)):
                return None
            return ir.Attr(attr.name, kind, tensors, doc_string=attr.doc_string)
        if constant and (attr.name, kind) in (("value_float", ir.AttributeType.FLOAT),
                                              ("value_floats", ir.AttributeType.FLOATS)):
            values = [attr.value] if kind == ir.AttributeType.FLOAT else list(attr.value)
            clipped = [_clip_float(v) for v in values]
            if all(a == b or a != a for a, b in zip(clipped, values)):  # a != a: NaN, kept
                return None
            self.changed += 1
            return ir.Attr(attr.name, kind, clipped[0] if kind == ir.AttributeType.FLOAT else clipped,
                           doc_string=attr.doc_string)
        return None


def _clip_float(v: float) -> float:
    if v != v or v in (float("inf"), float("-inf")):
        return v
    return min(max(v, -FP16_MAX), FP16_MAX)


def _clipped(array: Any) -> Any:
    """A clipped copy of an fp32 array, or None when it has no finite value out of range."""
    import numpy as np

    flat = array.reshape(-1)
    if not any(_needs_clip(flat[i:i + CHUNK]) for i in range(0, flat.size, CHUNK)):
        return None
    out = np.empty(flat.shape, dtype=np.float32)
    for i in range(0, flat.size, CHUNK):
        chunk, dst = flat[i:i + CHUNK], out[i:i + CHUNK]
        np.clip(chunk, -FP16_MAX, FP16_MAX, out=dst)  # NaN stays NaN
        infinite = np.isinf(chunk)
        dst[infinite] = chunk[infinite]
    return out.reshape(array.shape)


def _needs_clip(chunk: Any) -> bool:
    import numpy as np

    if chunk.size == 0:
        return False
    lo, hi = chunk.min(), chunk.max()  # NaN makes both NaN: the comparisons fail, exact check below
    if lo >= -FP16_MAX and hi <= FP16_MAX:
        return False
    magnitude = np.abs(chunk)
    return bool(np.any((magnitude > FP16_MAX) & (magnitude != np.inf)))
