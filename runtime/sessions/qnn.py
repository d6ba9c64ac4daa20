"""A QNN session: a package's QNN context binaries run by onnxruntime-qnn's QNN EP (the Session protocol).

One InferenceSession per specialization (qnn/<Name>.onnx, an EPContext model: its QNN context
binary holds the static graph and its weights), on the QNN EP alone: CPU fallback disabled, so
nothing of the graph runs on the host. The KV cache follows the AI 100 convention the graph
was exported with (scatter): the caller feeds the past and takes the retained outputs back.
On x86 onnxruntime-qnn's HTP backend is a simulator: numerics as on the NPU, speed not.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from runtime.package_format import Specialization, read_program
from runtime.session import host_kv


class QnnSession:
    """Opens ``<package>/<binary>/<Name>.onnx`` for every specialization with the provider options the
    program was compiled with. ``spinning`` (an option every session takes) changes nothing here."""

    keeps_kv = False

    def __init__(self, package_dir: str | Path, spinning: bool = True):
        from runtime import adapters, qnn_ep

        self.dir = Path(package_dir)
        self.program = read_program(self.dir)
        if not self.program.binary:
            raise ValueError(f"{self.dir}: the package has no QNN context (its target is {self.program.target})")
        self.signature = self.program.signature
        options = self.program.options.get("qnn")
        if not options:
            raise ValueError(f"{self.dir}: its program has no QNN provider options (options.qnn)")
        self.adapters, self.lora = adapters.load(self.dir, self.signature)
        self.output_names = [v.name for v in self.signature.outputs]
        self.sessions: dict[str, Any] = {}
        for spec in self.program.specializations:
            context = self.dir / self.program.binary / f"{spec.name}.onnx"
            if not context.is_file():
                raise FileNotFoundError(f"{self.dir}: no QNN context for {spec.name} ({context.name} is absent)")
            self.sessions[spec.name] = qnn_ep.open_session(context, options)

    def new_kv(self) -> dict[str, np.ndarray]:
        return host_kv(self.signature, self.program)

    def run(self, spec: Specialization, feeds: Mapping[str, np.ndarray],
            kv_rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        values = self.sessions[spec.name].run(self.output_names, {**feeds, **self.lora})
        return dict(zip(self.output_names, values))
