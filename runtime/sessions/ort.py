"""An ONNX Runtime session over a package (or a compiled program folder): one InferenceSession per graph file."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from runtime.package_format import Program, Specialization, read_program
from runtime.session import host_kv


def session_options(options: Mapping[str, Any]) -> Any:
    """onnxruntime.SessionOptions from a program's ``options``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(options.get("intra_op_num_threads", 0))
    so.inter_op_num_threads = int(options.get("inter_op_num_threads", 1))
    so.execution_mode = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
                         "parallel": ort.ExecutionMode.ORT_PARALLEL}[options.get("execution_mode", "sequential")]
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[options.get("graph_optimization_level", "all")]
    so.log_severity_level = 3
    for key, value in options.get("config_entries", {}).items():
        so.add_session_config_entry(key, str(value))
    return so


class OrtSession:
    """Runs a program with ONNX Runtime (the Session protocol); the KV cache lives on the host.

    Weights: ONNX Runtime memory-maps the package's one weights file, so every specialization
    (and every process) reads the same pages, unless it pre-packs MatMul weights, which
    gives each session a private packed copy. `share_weights=True` (default) turns
    pre-packing off: one copy of the weights in memory. Measured on SmolLM2 (fp32, 2 threads)
    with prefill + decode sessions: 0.65 GB (PSS) instead of 1.17 GB, decode about 20% slower.
    (SessionOptions.add_initializer does not help: packed copies are still made per session.)
    """

    kv_on_device = False

    def __init__(self, package_dir: str | Path, num_threads: int | None = None, share_weights: bool = True,
                 program: Program | None = None):
        import onnxruntime as ort

        self.dir = Path(package_dir)
        self.program = program or read_program(self.dir)
        options = dict(self.program.options)
        if num_threads:
            options["intra_op_num_threads"] = num_threads
        if share_weights:
            options["config_entries"] = {**options.get("config_entries", {}), "session.disable_prepacking": "1"}
        self.output_names = [v.name for v in self.program.signature.outputs]
        by_file: dict[str, Any] = {}  # one InferenceSession per file (a dynamic graph serves several shapes)
        self.sessions: dict[str, Any] = {}
        for spec in self.program.specializations:
            file = self.program.graphs[spec.name]
            if file not in by_file:
                by_file[file] = ort.InferenceSession(str(self.dir / file), session_options(options),
                                                     providers=["CPUExecutionProvider"])
            self.sessions[spec.name] = by_file[file]

    def new_kv(self) -> dict[str, np.ndarray]:
        return host_kv(self.program.signature, self.program)

    def run(self, spec: Specialization, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.sessions[spec.name].run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, values))
