"""STAND-IN for the Cloud AI 100 Platform SDK's `qaicrt` module, for tests only.

It offers the calls runtime/sessions/ai100.py makes (Context, Queue, Qpc, Program, ExecObj,
QBuffer, QIDList, BufferDimensionsVecRef) and "runs" a package's QPC by running the ONNX
next to it (the exact ONNX handed to the compiler) with ONNX Runtime, keeping the KV cache
inside the program as the device's retained state would. It checks the session's use of the
interface (bindings, buffer sizes, skipped retained-state buffers), not the device.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

SUCCESS = 0
NUMPY_TO_AIC = {"float32": 0, "float16": 1, "int64": 7}
AIC_TO_NUMPY = {0: np.float32, 1: np.float16, 7: np.int64}


class Context:
    pass


class QBuffer(bytes):
    pass


class QIDList(list):
    pass


class BufferDimensionsVecRef(list):
    pass


class Qpc:
    def __init__(self, qpc_dir: str):
        self.dir = Path(qpc_dir)
        if not (self.dir / "programqpc.bin").is_file():
            raise RuntimeError(f"stand-in qaicrt: no programqpc.bin in {qpc_dir}")
        self.package = self.dir.parent
        specs = json.loads((self.package / "specializations.json").read_text())["specializations"]
        self.shapes = [{k: int(v) for k, v in s.get("symbols", s).items()} for s in specs]
        self.io = json.loads((self.package / "io.json").read_text())  # the graph handed to the compiler

    def _dims(self, shape: list[Any], spec: dict[str, int]) -> list[int]:
        return [spec[d] if isinstance(d, str) else int(d) for d in shape]

    def getIoDescriptor(self) -> tuple[int, bytes]:
        bindings = []
        values = [(v, 0) for v in self.io["inputs"]] + [(v, 1) for v in self.io["outputs"]]
        for index, (v, direction) in enumerate(values):
            dtype = v.get("dtype", "float32")
            largest = max((self._dims(v["shape"], s) for s in self.shapes), key=lambda d: int(np.prod(d)))
            bindings.append({"name": v["name"], "index": index, "dir": direction, "type": NUMPY_TO_AIC[dtype],
                             "dims": self._dims(v["shape"], self.shapes[0]),
                             "size": int(np.prod(largest)) * np.dtype(dtype).itemsize})
        allowed = [{"shapes": [{"dims": self._dims(v["shape"], s)} for v, _ in values]} for s in self.shapes]
        return SUCCESS, json.dumps({"selected_set": {"bindings": bindings}, "allowed_shapes": allowed}).encode()


class Program:
    def __init__(self, context: Context, devices: Any, qpc: Qpc):
        self.qpc = qpc
        self.loaded = self.active = False

    def load(self) -> int:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(self.qpc.package / "model.onnx"), providers=["CPUExecutionProvider"])
        self.loaded = True
        return SUCCESS

    def activate(self) -> int:
        assert self.loaded, "stand-in qaicrt: activate() before load()"
        self.active = True
        return SUCCESS


class ExecObj:
    def __init__(self, context: Context, program: Program):
        self.program = program
        self.state: dict[str, np.ndarray] = {}
        self.outputs: list[bytes] = []

    def setData(self, buffers: list[bytes], dims: list[tuple[int, list[int]]]) -> int:
        self.buffers, self.dims = list(buffers), list(dims)
        return SUCCESS

    def run(self) -> None:
        p = self.program
        assert p.active, "stand-in qaicrt: enqueue before activate()"
        _, raw = p.qpc.getIoDescriptor()
        bindings = json.loads(raw)["selected_set"]["bindings"]
        feeds = {}
        for b in bindings:
            if b["dir"] != 0:
                continue
            if b["name"].startswith("past_"):
                assert len(self.buffers[b["index"]]) == 0, f"{b['name']}: retained state must not be sent"
                continue
            data = np.frombuffer(self.buffers[b["index"]], dtype=AIC_TO_NUMPY[b["type"]])
            feeds[b["name"]] = data.reshape(self.dims[b["index"]][1])
        if not self.state and any(b["name"].startswith("past_") for b in bindings):  # an encoder has no KV state
            ctx, fbs = p.qpc.shapes[0]["ctx_len"], p.qpc.shapes[0].get("full_batch_size", feeds["input_ids"].shape[0])
            d = p.qpc.io["dims"]
            self.state = {b["name"]: np.zeros((fbs, d["num_kv_heads"], ctx, d["head_dim"]), np.float32)
                          for b in bindings if b["dir"] == 0 and b["name"].startswith("past_")}
        names = [b["name"] for b in bindings if b["dir"] == 1]
        values = dict(zip(names, p.session.run(names, {**feeds, **self.state})))
        for name in self.state:
            self.state[name] = values[f"{name}_RetainedState"]
        self.outputs = [b""] * len(bindings)
        for b in bindings:
            if b["dir"] == 1 and not b["name"].endswith("_RetainedState"):
                out = values[b["name"]]
                # a device writes into the buffer the session set up: its dims must be the output's
                assert self.dims[b["index"]][1] == list(out.shape), (
                    f"stand-in qaicrt: output {b['name']} has shape {list(out.shape)}, "
                    f"the session's buffer dims are {self.dims[b['index']][1]}")
                assert len(self.buffers[b["index"]]) == out.nbytes, f"stand-in qaicrt: {b['name']} buffer size"
                self.outputs[b["index"]] = out.tobytes()

    def waitForCompletion(self) -> int:
        return SUCCESS

    def getData(self) -> tuple[int, list[bytes]]:
        return SUCCESS, self.outputs


class Queue:
    def __init__(self, context: Context, device_id: int):
        self.device_id = device_id

    def enqueue(self, exec_obj: ExecObj) -> int:
        exec_obj.run()
        return SUCCESS
