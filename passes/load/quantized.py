"""Checkpoints already quantized (GPTQ, AWQ, compressed-tensors): their integers in MatMulNBits' layout, and what they mean in float.

``read(folder)`` gives, for each quantized Linear, its unsigned integers, per-group scales and
zero points (``Linear``), and the float weight they stand for, ``(q - zero) * scale`` in fp32:
exactly what ONNX Runtime's MatMulNBits computes from the same integers, so the float model the
load stage writes (the export's source and the validation reference) and the package agree by
construction. ``save`` keeps the integers beside that float checkpoint (``SIDECAR``); the
quantize stage puts them into the program unchanged (passes/quantize.py). FP8 weights
(compressed-tensors float-quantized) are only dequantized, as the reference library does.
Layouts: GPTQ (qweight packed along the input, qzeros along the output, v1 zeros stored minus
one; no act-order), AWQ GEMM (both packed along the output in the order 0 2 4 6 1 3 5 7),
compressed-tensors pack-quantized (values + 2^(bits-1), packed along the input; zero points
packed along the output).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SIDECAR = "quantized_weights.safetensors"
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
READABLE = ("gptq (4 or 8 bits, no act-order), awq (4-bit GEMM), compressed-tensors pack-quantized (4 or 8 bits) "
            "or float-quantized (fp8, dequantized)")


@dataclass
class Linear:
    """One quantized Linear [N out, K in] as MatMulNBits reads it."""

    ints: np.ndarray            # uint8 [N, K], unsigned
    scales: np.ndarray          # float32 [N, G]
    zeros: np.ndarray | None    # uint8 [N, G]; None: 2^(bits-1)
    bits: int
    group: int                  # K / G (the last group may be shorter)

    def dequantized(self) -> np.ndarray:
        import numpy as np

        n, k = self.ints.shape
        zero = np.float32(1 << (self.bits - 1)) if self.zeros is None else np.repeat(self.zeros.astype(np.float32), self.group, 1)[:, :k]
        return (self.ints.astype(np.float32) - zero) * np.repeat(self.scales, self.group, 1)[:, :k]

    def matmul_nbits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
        """(B [N, blocks, bytes], scales [N, blocks], packed zero points [N, bytes] or None, block size)."""
        import numpy as np

        block = _block(self.group)
        reps = self.group // block
        n, k = self.ints.shape
        blocks = -(-k // block)
        ints = np.zeros((n, blocks * block), np.uint8)
        ints[:, :k] = self.ints
        scales = np.repeat(self.scales, reps, 1)[:, :blocks].astype(np.float32)
        zeros = None if self.zeros is None else np.repeat(self.zeros, reps, 1)[:, :blocks]
        if self.bits == 4:
            ints = ints[:, 0::2] | (ints[:, 1::2] << 4)
            if zeros is not None:
                zeros = np.pad(zeros, ((0, 0), (0, blocks % 2)), constant_values=8)
                zeros = zeros[:, 0::2] | (zeros[:, 1::2] << 4)
        return ints.reshape(n, blocks, -1), scales, zeros, block


def declared(folder: Path | str | None) -> dict[str, Any] | None:
    """The folder's config.json ``quantization_config``, or None."""
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("quantization_config")
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def unreadable(qc: dict[str, Any]) -> str | None:
    """Why a declared quantization cannot be read here (one line's worth), or None."""
    method, fmt = qc.get("quant_method"), qc.get("format")
    if method == "gptq" and qc.get("bits") in (4, 8) and not qc.get("desc_act"):
        return None
    if method == "awq" and qc.get("bits", qc.get("w_bit")) == 4 and str(qc.get("version", "gemm")).lower() == "gemm":
        return None
    if method == "compressed-tensors" and fmt in ("pack-quantized", "float-quantized"):
        return None
    return (f"quantization_config.quant_method {method!r}"
            + (f" (format {fmt!r})" if fmt else "") + (" with desc_act (act-order)" if qc.get("desc_act") else "")
            + f" cannot be read; allowed: {READABLE}")


def read(folder: Path) -> tuple[dict[str, Any], dict[str, Linear]]:
    """(float weights by parameter name, quantized Linears by module name) of a quantized HF folder."""
    import numpy as np

    qc = declared(folder) or {}
    tensors = _tensors(folder)
    method = qc.get("quant_method")
    linears: dict[str, Linear] = {}
    floats: dict[str, Any] = {}
    dropped: set[str] = set()  # GPTQ's all-zero biases of Linears that have none
    if method == "gptq":
        bits, group, v1 = qc["bits"], qc.get("group_size", -1), qc.get("checkpoint_format", "gptq") != "gptq_v2"
        for name in [n for n in tensors if n.endswith(".qweight")]:
            m = name[: -len(".qweight")]
            q = _unpack(tensors[name].T, bits).T                 # [K, N]
            k = q.shape[0]
            g = group if group > 0 else k
            g_idx = tensors.get(f"{m}.g_idx")
            if g_idx is not None and not np.array_equal(np.asarray(g_idx), np.arange(k) // g):
                raise ValueError(f"{m}: act-order groups (g_idx) cannot be read; allowed: {READABLE}")
            # v1 stores zero - 1, wrapping 0 to the top value: + 1 wraps it back
            zeros = (_unpack(tensors[f"{m}.qzeros"], bits)[:, : q.shape[1]].astype(np.int32) + (1 if v1 else 0)) \
                & ((1 << bits) - 1)
            linears[m] = Linear(np.ascontiguousarray(q.T), _f32(tensors[f"{m}.scales"]).T.copy(),
                                zeros.T.astype(np.uint8).copy(), bits, g)
            if f"{m}.bias" in tensors and not np.any(_f32(tensors[f"{m}.bias"])):
                dropped.add(f"{m}.bias")
    elif method == "awq":
        bits, group = qc.get("bits", qc.get("w_bit")), qc.get("group_size", qc.get("q_group_size"))
        order = np.argsort(AWQ_ORDER)
        for name in [n for n in tensors if n.endswith(".qweight")]:
            m = name[: -len(".qweight")]
            q = _awq(_unpack(tensors[name], bits), order)        # [K, N]
            zeros = _awq(_unpack(tensors[f"{m}.qzeros"], bits), order)
            linears[m] = Linear(np.ascontiguousarray(q.T), _f32(tensors[f"{m}.scales"]).T.copy(),
                                np.ascontiguousarray(zeros.T), bits, group)
    elif method == "compressed-tensors" and qc.get("format") == "pack-quantized":
        for name in [n for n in tensors if n.endswith(".weight_packed")]:
            m = name[: -len(".weight_packed")]
            n, k = (int(x) for x in np.asarray(tensors[f"{m}.weight_shape"]).reshape(-1))
            words = np.asarray(tensors[name])
            bits = words.shape[1] * 32 // k if (words.shape[1] * 32) % k == 0 else 4
            scales = _f32(tensors[f"{m}.weight_scale"])
            zp = tensors.get(f"{m}.weight_zero_point")
            zeros = None if zp is None else _unpack(np.asarray(zp).T, bits)[:, :n].T.copy()  # packed along N
            linears[m] = Linear(_unpack(words, bits)[:, :k], scales, zeros, bits, -(-k // scales.shape[1]))
    elif method == "compressed-tensors" and qc.get("format") == "float-quantized":
        import torch

        for name in [n for n in tensors if n.endswith(".weight_scale")]:
            m = name[: -len(".weight_scale")]
            w = tensors[f"{m}.weight"]
            floats[f"{m}.weight"] = w.to(torch.float32) * tensors[name].to(torch.float32)
    for m, linear in linears.items():
        floats[f"{m}.weight"] = linear.dequantized()
    for name, value in tensors.items():
        if name not in dropped and name not in floats and not _is_quant_param(name):
            floats[name] = value
    return floats, linears


def save(out: Path, linears: dict[str, Linear]) -> None:
    """The Linears' integers, scales and zero points in MatMulNBits' layout, beside the float checkpoint."""
    from safetensors.numpy import save_file

    arrays, meta = {}, {}
    for m, linear in linears.items():
        b, s, z, block = linear.matmul_nbits()
        arrays[f"{m}.blocks"], arrays[f"{m}.scales"] = b, s
        if z is not None:
            arrays[f"{m}.zeros"] = z
        meta[m] = {"bits": linear.bits, "block_size": block, "n": linear.ints.shape[0], "k": linear.ints.shape[1]}
    save_file(arrays, str(out / SIDECAR), metadata={"linears": json.dumps(meta, sort_keys=True)})


def load_sidecar(folder: Path) -> dict[str, dict[str, Any]]:
    """{module: {bits, block_size, n, k, blocks, scales, zeros}} from a load stage's folder; {} if none."""
    path = Path(folder) / SIDECAR
    if not path.is_file():
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["linears"])
        return {m: {**info, "blocks": f.get_tensor(f"{m}.blocks"), "scales": f.get_tensor(f"{m}.scales"),
                    "zeros": f.get_tensor(f"{m}.zeros") if f"{m}.zeros" in f.keys() else None}
                for m, info in meta.items()}


def _tensors(folder: Path) -> dict[str, Any]:
    """Every tensor of the folder's safetensors files, by name (torch tensors: bf16 and fp8 have no numpy type)."""
    from safetensors import safe_open

    found: dict[str, Any] = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            found.update((name, f.get_tensor(name)) for name in f.keys())
    return found


def _f32(t: Any) -> np.ndarray:
    import numpy as np

    import torch

    return t.to(torch.float32).numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32)


def _unpack(words: Any, bits: int) -> np.ndarray:
    """int32 [rows, w] packed along the last axis, element i at bits [i*bits, (i+1)*bits): uint8 [rows, w * 32 / bits]."""
    import numpy as np

    raw = np.ascontiguousarray(np.asarray(words).astype(np.int32, copy=False)).view(np.uint8)  # little-endian bytes
    if bits == 8:
        return raw.copy()
    if bits != 4:
        raise ValueError(f"{bits}-bit packing cannot be read; allowed: 4 or 8 bits")
    return np.stack([raw & 0xF, raw >> 4], axis=-1).reshape(raw.shape[0], -1)


def _awq(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    import numpy as np

    rows, cols = values.shape
    return values.reshape(rows, cols // 8, 8)[:, :, order].reshape(rows, cols)


def _block(group: int) -> int:
    """MatMulNBits' block: the group if a power of two >= 16, else the largest such power dividing it."""
    block = group & -group
    while block > 256:
        block //= 2
    if block < 16:
        raise ValueError(f"group size {group} has no power-of-two block >= 16 that divides it")
    return block


def _is_quant_param(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("qweight", "qzeros", "scales", "g_idx", "weight_packed", "weight_shape",
                                        "weight_scale", "weight_zero_point", "input_scale")
