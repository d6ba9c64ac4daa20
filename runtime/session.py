"""The Session protocol: what generation (and every later runtime feature) needs from a backend.

ONNX Runtime (runtime.sessions.ort.OrtSession) and Cloud AI 100 (runtime.sessions.ai100.AI100Session)
implement it (runtime.sessions.open_session picks one); runtime.generate and friends are
written once against it.
"""
from __future__ import annotations

from typing import Mapping, Protocol, runtime_checkable

import numpy as np

from runtime.package_format import Program, Signature, Specialization


@runtime_checkable
class Session(Protocol):
    """A loaded program: run one specialization at a time; the KV cache lives on the host or the device.

    - ``program``: the package's program (signature with roles, specializations with roles).
    - ``kv_on_device``: True when the device keeps the retained KV state between calls (AI 100);
      then ``new_kv`` is empty and ``run`` neither takes past inputs nor returns retained outputs.
    - ``new_kv()``: zeroed host KV buffers by input name (role past_kv), [kv_batch, heads, ctx, head_dim].
    - ``run(spec, feeds)``: one inference of that specialization; feeds by input name, outputs by
      output name (retained KV outputs included when ``kv_on_device`` is False).
    """

    program: Program
    kv_on_device: bool

    def new_kv(self) -> dict[str, np.ndarray]: ...

    def run(self, spec: Specialization, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def host_kv(signature: Signature, program: Program) -> dict[str, np.ndarray]:
    """Zeroed KV buffers for a program whose KV cache lives on the host."""
    dims = signature.dims
    shape = (program.kv_batch_size, dims["num_kv_heads"], program.ctx_len, dims["head_dim"])
    return {v.name: np.zeros(shape, dtype=np.dtype(v.dtype)) for v in signature.past_kv()}
