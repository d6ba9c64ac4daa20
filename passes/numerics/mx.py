"""OCP Microscaling (MX) rounding in NumPy: MXFP6 (E2M3) and MXINT8, quantize-then-dequantize.

An MX block is 32 consecutive elements along one axis sharing one power-of-two scale X (an
E8M0 exponent); each element is stored in a narrow format and means ``X * element``. The
scale follows the OCP MX spec v1.0 (section 6.3): ``X = 2^(floor(log2(max|v|)) - emax)``,
where ``emax`` is the element format's largest exponent, and elements that land past the
format's largest value saturate to it. Elements round to nearest, ties to even.

MXFP6 is taken as **E2M3** (1 sign, 2 exponent, 3 mantissa bits; largest 7.5). The spec
defines E2M3 and E3M2; E2M3 keeps a mantissa bit more at the cost of range that a block's
shared scale already provides (block values span a few binades below their max): on SmolLM2
its weights cost 7.8 % perplexity against E3M2's 22 % (README). tests/test_numerics.py checks
this rounding (both element formats) against torchao's ``mx_formats`` (FLOOR scaling).

MXINT8 elements are 8-bit two's-complement fixed point with an implicit scale of 2^-6
(emax 0, values in [-127/64, 127/64]; -128 is not used, keeping the format symmetric).

Blocks run along ``axis`` (the reduction axis of a MatMul weight, the head dimension of a KV
cache); a last block shorter than 32 is padded with zeros, which change no block maximum.
"""
from __future__ import annotations

from typing import Any

BLOCK = 32
# (largest value, emax, mantissa bits, smallest normal exponent) of the FP6 element formats
E2M3 = (7.5, 2, 3, 0)
E3M2 = (28.0, 4, 2, -2)
INT8_EMAX, INT8_FRACTION, INT8_MAX = 0, 6, 127
SCALE_EXP_MIN, SCALE_EXP_MAX = -127, 127  # E8M0 (255 is NaN)


def mxfp6(x: Any, axis: int = -1, element: tuple = E2M3) -> Any:
    """``x`` (float32) rounded to MXFP6 blocks (E2M3 elements, or ``element=E3M2``) along ``axis``, back in float32."""
    top, emax, mantissa, emin = element
    return _blockwise(x, axis, emax, lambda v: _round_fp(v, top, mantissa, emin))


def mxint8(x: Any, axis: int = -1) -> Any:
    """``x`` (float32) rounded to MXINT8 blocks along ``axis``, back in float32."""
    return _blockwise(x, axis, INT8_EMAX, _round_int8)


def _blockwise(x: Any, axis: int, emax: int, round_elements: Any) -> Any:
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    moved = np.moveaxis(x, axis, -1)
    n = moved.shape[-1]
    pad = (-n) % BLOCK
    if pad:
        moved = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, pad)])
    blocks = moved.reshape(*moved.shape[:-1], -1, BLOCK)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    _, exponent = np.frexp(amax)  # amax = m * 2^e, m in [0.5, 1): floor(log2 amax) = e - 1
    shared = np.clip(exponent.astype(np.int32) - 1 - emax, SCALE_EXP_MIN, SCALE_EXP_MAX)
    scale = np.ldexp(np.float32(1.0), shared).astype(np.float32)
    rounded = round_elements(blocks / scale) * scale
    rounded = np.where(amax == 0, np.float32(0.0), rounded).reshape(*moved.shape[:-1], -1)[..., :n]
    return np.moveaxis(rounded.astype(np.float32), -1, axis)


def _round_fp(v: Any, top: float, mantissa: int, emin: int) -> Any:
    """Round to a small float format's grid (ties to even), saturating at +-top."""
    import numpy as np

    magnitude = np.abs(v)
    _, e = np.frexp(np.where(magnitude > 0, magnitude, 1.0))
    binade = np.maximum(e.astype(np.int32) - 1, emin)  # subnormals share the smallest binade's step
    step = np.ldexp(np.float32(1.0), binade - mantissa)
    return np.clip(np.round(v / step) * step, -top, top)


def _round_int8(v: Any) -> Any:
    import numpy as np

    unit = np.float32(2.0 ** -INT8_FRACTION)
    return np.clip(np.round(v / unit), -INT8_MAX, INT8_MAX) * unit
