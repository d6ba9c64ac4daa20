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
    """A loaded program: run one specialization at a time; the KV cache lives with the caller or the session.

    - ``program``: the package's program (signature with roles, specializations with roles).
    - ``keeps_kv``: True when the session keeps the KV cache between calls itself (on the AI 100
      device, or in ONNX Runtime buffers updated in place); then ``new_kv`` is empty and ``run``
      neither takes past inputs nor returns retained outputs. False: the caller feeds the past
      and takes the retained outputs back (``new_kv`` gives the zeroed buffers).
    - ``new_kv()``: KV buffers by input name (role past_kv), [kv_batch, heads, ctx, head_dim].
    - ``run(spec, feeds, kv_rows)``: one inference of that specialization; feeds by input name,
      outputs by output name (arrays valid until the next run: copy what you keep).
      ``kv_rows`` [rows, 1]: the KV row each input row uses (continuous batching; default: row
      r uses row r), fed as ``batch_index`` where the graph has one.
    """

    program: Program
    keeps_kv: bool

    def new_kv(self) -> dict[str, np.ndarray]: ...

    def run(self, spec: Specialization, feeds: Mapping[str, np.ndarray],
            kv_rows: np.ndarray | None = None) -> dict[str, np.ndarray]: ...


def host_kv(signature: Signature, program: Program) -> dict[str, np.ndarray]:
    """Zeroed KV buffers for a program whose KV cache lives on the host."""
    dims = signature.dims
    shape = (program.kv_batch_size, dims["num_kv_heads"], program.ctx_len, dims["head_dim"])
    return {v.name: np.zeros(shape, dtype=np.dtype(v.dtype)) for v in signature.past_kv()}
