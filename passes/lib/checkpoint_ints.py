"""A quantized checkpoint's integers put into the program unchanged: MatMuls whose weights they stand for become MatMulNBits.

The load stage wrote the checkpoint's float meaning ((q - zero) * scale, fp32) as the model the
export saw, and the integers beside it (passes.load.quantized). A MatMul weight here is matched
by value, not by name (compile packs q, k and v into one weight, renames, transposes): its
columns, in order, must be whole dequantized rows of checkpoint Linears, checked exactly. Its
MatMulNBits then takes those Linears' blocks, scales and zero points, concatenated row-wise.
"""
from __future__ import annotations

import hashlib
from typing import Any, Mapping


def substitute(model: Any, linears: Mapping[str, Mapping[str, Any]], accuracy_level: int) -> int:
    """Replace the MatMuls of ``model`` (onnx_ir) made of ``linears``' rows; return how many Linears they hold."""
    import numpy as np

    if not linears:
        return 0
    floats = {m: dequantize(v) for m, v in linears.items()}
    first_row = {_digest(d[0]): m for m, d in floats.items()}
    done = 0
    for node in list(model.graph):
        weight = node.inputs[1] if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") else None
        if weight is None or weight.const_value is None or len(weight.const_value.shape) != 2:
            continue
        w = weight.const_value.numpy()
        if w.dtype != np.float32:
            continue
        parts, j = [], 0
        while j < w.shape[1]:
            m = first_row.get(_digest(np.ascontiguousarray(w[:, j])))
            if m is None or j + floats[m].shape[0] > w.shape[1] or not np.array_equal(w[:, j:j + floats[m].shape[0]].T, floats[m]):
                break
            parts.append(m)
            j += floats[m].shape[0]
        if j != w.shape[1] or len({(linears[m]["bits"], linears[m]["block_size"]) for m in parts}) != 1:
            continue
        _replace(model, node, [linears[m] for m in parts], accuracy_level)
        done += len(parts)
    for value in list(model.graph.initializers.values()):  # the float weights replaced
        if not value.uses() and not value.is_graph_output():
            del model.graph.initializers[value.name]
    return done


def dequantize(linear: Mapping[str, Any]) -> Any:
    """float32 [n, k]: what MatMulNBits computes from the blocks, scales and zero points (the load stage's
    float weights, by the same formula: passes.load.quantized.Linear.dequantized)."""
    import numpy as np

    from passes.load.quantized import Linear

    blocks, bits, k = linear["blocks"], linear["bits"], linear["k"]
    n, kb = blocks.shape[:2]

    def unpacked(packed: Any) -> Any:  # two 4-bit values a byte, the first in the low nibble
        return packed if bits == 8 else np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(n, -1)

    zeros = None if linear["zeros"] is None else unpacked(linear["zeros"])[:, :kb]
    return Linear(unpacked(blocks.reshape(n, -1))[:, :k], linear["scales"].reshape(n, kb), zeros, bits,
                  linear["block_size"]).dequantized()


def _replace(model: Any, node: Any, parts: list[Mapping[str, Any]], accuracy_level: int) -> None:
    import numpy as np
    import onnx_ir as ir

    bits, block = parts[0]["bits"], parts[0]["block_size"]
    default = (1 << (bits - 1)) * (0x11 if bits == 4 else 1)  # the zero point MatMulNBits assumes, packed

    def zeros(p: Mapping[str, Any]) -> Any:
        width = -(-p["blocks"].shape[1] * bits // 8)
        return p["zeros"] if p["zeros"] is not None else np.full((p["n"], width), default, np.uint8)

    arrays = {"blocks": np.concatenate([p["blocks"] for p in parts]),
              "scales": np.concatenate([p["scales"].reshape(p["n"], -1) for p in parts])}
    if any(p["zeros"] is not None for p in parts):
        arrays["zeros"] = np.concatenate([zeros(p) for p in parts])
    inputs = [node.inputs[0]]
    for key, array in arrays.items():
        name = f"{node.name}_from_checkpoint.{key}"
        value = ir.Value(name=name, const_value=ir.Tensor(array, name=name))
        model.graph.register_initializer(value)
        inputs.append(value)
    n = sum(p["n"] for p in parts)
    nbits = ir.node("MatMulNBits", inputs, domain="com.microsoft", name=f"{node.name}_from_checkpoint",
                    attributes={"K": parts[0]["k"], "N": n, "bits": bits, "block_size": block,
                                "accuracy_level": accuracy_level})
    ir.convenience.replace_nodes_and_values(model.graph, node, [node], [nbits], [node.outputs[0]], [nbits.outputs[0]])
    model.opset_imports.setdefault("com.microsoft", 1)


def _digest(row: Any) -> str:
    return hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest()
