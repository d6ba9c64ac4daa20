"""A Cloud AI 100 session over the Platform SDK's qaicrt (the Session protocol).

qaicrt and QAicApi_pb2 ship with the Platform SDK (not installable here), so they are
imported when a session is made, never at module import; without them the error says where
they are expected. The KV cache stays on the device: the buffers of the past_kv inputs and
retained_kv outputs are skipped, so `run` neither sends past inputs nor returns retained outputs.
NOTE: written against the publicly documented qaicrt interface; not run on AI 100 hardware here.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from runtime.package_format import Specialization, read_program

SDK_PYTHON = "/opt/qti-aic/dev/lib/x86_64"  # passes.targets.ai100.sdk.SDK_PYTHON
# QAicApi_pb2 data types -> numpy
AIC_TO_NUMPY = {0: np.float32, 1: np.float16, 2: np.int8, 3: np.uint8, 4: np.int16, 5: np.int32, 7: np.int64, 8: np.bool_}


def import_qaicrt() -> tuple[Any, Any]:
    """(qaicrt, QAicApi_pb2), or an ImportError saying what is missing and where it was looked for."""
    if SDK_PYTHON not in sys.path and Path(SDK_PYTHON).is_dir():
        sys.path.append(SDK_PYTHON)
    try:
        import qaicrt  # type: ignore[import-not-found]
        import QAicApi_pb2  # type: ignore[import-not-found]
    except ImportError as e:
        raise ImportError(
            f"AI 100 runtime: cannot import {e.name or 'qaicrt'}: the Cloud AI 100 Platform SDK's Python "
            f"bindings are not installed (looked in sys.path and {SDK_PYTHON}); install the Platform SDK, "
            "or run the package's ONNX with ONNX Runtime (the default session)") from None
    return qaicrt, QAicApi_pb2


class AI100Session:
    """Loads ``<package>/qpc/programqpc.bin`` on ``device_ids`` and runs one inference per call.
    ``spinning`` (an option every session takes) changes nothing: the device runs the program."""

    keeps_kv = True

    def __init__(self, package_dir: str | Path, device_ids: Sequence[int] = (0,), spinning: bool = True):
        qaicrt, api = import_qaicrt()
        self.dir = Path(package_dir)
        self.program = read_program(self.dir)
        if not self.program.binary:
            raise ValueError(f"{self.dir}: the package has no AI 100 program (its target is {self.program.target})")
        sig = self.program.signature
        self._kv_names = {v.name for v in sig.past_kv()} | {sig.retained(v).name for v in sig.past_kv()}
        from runtime import adapters

        self.adapters, self.lora = adapters.load(self.dir, sig)  # LoRA slots and weight inputs (fed every run)

        self._context = qaicrt.Context()
        self._queue = qaicrt.Queue(self._context, device_ids[0])
        qpc = qaicrt.Qpc(str(self.dir / self.program.binary))
        status, raw = qpc.getIoDescriptor()
        _check(status, "read the QPC's IO descriptor")
        desc = api.IoDesc()
        desc.ParseFromString(bytes(raw))
        self._bindings = list(desc.selected_set.bindings)
        self._index = {b.name: b.index for b in self._bindings}
        self.input_names = [b.name for b in self._bindings if b.dir == 0]
        self.allowed_shapes = [[list(s.dims) for s in allowed.shapes] for allowed in desc.allowed_shapes]
        devices = qaicrt.QIDList(list(device_ids)) if len(device_ids) > 1 else None
        self._program = qaicrt.Program(self._context, devices, qpc) if devices else qaicrt.Program(self._context, device_ids[0], qpc)
        _check(self._program.load(), f"load the QPC on devices {list(device_ids)}")
        _check(self._program.activate(), "activate the program")
        self._exec = qaicrt.ExecObj(self._context, self._program)
        self._qaicrt = qaicrt
        self._buffers = [qaicrt.QBuffer(bytes(b.size)) for b in self._bindings]
        self._dims = [(np.dtype(AIC_TO_NUMPY[b.type]).itemsize, list(b.dims)) for b in self._bindings]
        # The device keeps the KV cache between calls: no host buffers for it.
        for b in self._bindings:
            if b.name in self._kv_names:
                self._buffers[b.index] = qaicrt.QBuffer(bytes(0))
                self._dims[b.index] = (self._dims[b.index][0], [0])

    def new_kv(self) -> dict[str, np.ndarray]:
        return {}  # the retained state lives on the device

    def run(self, spec: Specialization, feeds: Mapping[str, np.ndarray],
            kv_rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        # The device picks the specialization from the buffers' dimensions: inputs as fed, and
        # outputs as the signature gives them for this specialization's symbols.
        for v in self.program.signature.outputs:
            if v.name not in self._kv_names:
                i = self._index[v.name]
                dims = [spec.symbols[d] if isinstance(d, str) else int(d) for d in v.shape]
                self._dims[i] = (self._dims[i][0], dims)
                self._buffers[i] = self._qaicrt.QBuffer(bytes(int(np.prod(dims)) * self._dims[i][0]))
        for name, value in {**feeds, **self.lora}.items():
            if name in self._kv_names:
                continue
            i = self._index[name]
            value = np.ascontiguousarray(value, dtype=AIC_TO_NUMPY[self._bindings[i].type])
            self._buffers[i] = self._qaicrt.QBuffer(value.tobytes())
            self._dims[i] = (value.itemsize, list(value.shape))
        self._exec.setData(self._buffers, self._qaicrt.BufferDimensionsVecRef(self._dims))
        _check(self._queue.enqueue(self._exec), "enqueue an inference")
        _check(self._exec.waitForCompletion(), "run an inference")
        status, outputs = self._exec.getData()
        _check(status, "read the outputs")
        result = {}
        for b in self._bindings:
            if b.dir == 1 and b.name not in self._kv_names:  # 1: output binding
                dtype = AIC_TO_NUMPY[b.type]
                result[b.name] = np.frombuffer(bytes(outputs[b.index]), dtype=dtype).reshape(self._dims[b.index][1])
        return result


def _check(status: Any, what: str) -> None:
    ok = status in (None, 0, True) or getattr(status, "name", "") in ("Success", "QS_SUCCESS")
    if not ok:
        raise RuntimeError(f"AI 100 runtime: could not {what} (status {status})")
