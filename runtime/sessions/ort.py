"""An ONNX Runtime session over a package (or a compiled program folder): one InferenceSession per graph file.

Two ways to carry the KV cache, by the signature's ``kv_update``:

- ``scatter`` (the AI 100 convention): the caller feeds the past and takes the retained
  outputs back; each step returns the whole updated cache (a copy of it).
- ``in_place`` (the CPU program: GroupQueryAttention): the session keeps one buffer per past
  input and binds it, through IO binding, as both the past input and its retained output, so
  a step writes only its new rows, whatever ctx_len. Continuous batching hands a step the KV
  rows it uses (``kv_rows``): one row, or all of them, as views of those buffers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from runtime import package_format as fmt
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
    """Runs a program with ONNX Runtime (the Session protocol).

    Weights: ONNX Runtime memory-maps the package's weights file. One graph file (the CPU
    program) means one session and one pre-packed copy of the weights for every
    specialization. Several fixed-shape graph files would each pre-pack a private copy, so
    `share_weights=True` (default) turns pre-packing off for them: one copy in memory, decode
    about 20 % slower (measured on SmolLM2 with prefill + decode sessions, 0.65 GB PSS instead
    of 1.17 GB). ``spinning=False``: its threads sleep between runs instead of spinning, for
    sessions that take turns on the same cores (a draft model and its target).
    """

    def __init__(self, package_dir: str | Path, num_threads: int | None = None, share_weights: bool = True,
                 program: Program | None = None, spinning: bool = True):
        import onnxruntime as ort

        self.dir = Path(package_dir)
        self.program = program or read_program(self.dir)
        self.signature = self.program.signature
        options = dict(self.program.options)
        if num_threads:
            options["intra_op_num_threads"] = num_threads
        files = {self.program.graphs[s.name] for s in self.program.specializations}
        if share_weights and len(files) > 1:
            options["config_entries"] = {**options.get("config_entries", {}), "session.disable_prepacking": "1"}
        if not spinning:  # sessions that take turns (a draft and its target) must not spin on each other's cores
            options["config_entries"] = {**options.get("config_entries", {}), "session.intra_op.allow_spinning": "0"}
        self.output_names = [v.name for v in self.signature.outputs]
        by_file: dict[str, Any] = {}  # one InferenceSession per file (a dynamic graph serves several shapes)
        self.sessions: dict[str, Any] = {}
        for spec in self.program.specializations:
            file = self.program.graphs[spec.name]
            if file not in by_file:
                by_file[file] = ort.InferenceSession(str(self.dir / file), session_options(options),
                                                     providers=["CPUExecutionProvider"])
            self.sessions[spec.name] = by_file[file]
        from runtime import adapters

        self.adapters, self.lora = adapters.load(self.dir, self.signature)  # LoRA slots and weight inputs (fed every run)
        self.keeps_kv = self.signature.kv_update == fmt.KV_IN_PLACE
        if self.keeps_kv:
            self._kv = host_kv(self.signature, self.program)
            self._views: dict[tuple[int, int], dict[str, Any]] = {}
            self._bindings: dict[tuple, tuple[Any, np.ndarray]] = {}
            self._retained = {p.name: self.signature.retained(p).name for p in self.signature.past_kv()}
            self._results = [v for v in self.signature.outputs if v.role != fmt.RETAINED_KV]  # logits[, proposals]

    def new_kv(self) -> dict[str, np.ndarray]:
        # in place, stale rows of an earlier sequence are never read: nothing to reset
        return {} if self.keeps_kv else host_kv(self.signature, self.program)

    def run(self, spec: Specialization, feeds: Mapping[str, np.ndarray],
            kv_rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        session = self.sessions[spec.name]
        if not self.keeps_kv:
            values = session.run(self.output_names, {**feeds, **self.lora})
            return dict(zip(self.output_names, values))
        kv_rows = None if kv_rows is None else np.asarray(kv_rows).reshape(-1)
        ids = next(iter(feeds.values()))
        rows = ids.shape[0]
        first = 0 if kv_rows is None else int(kv_rows[0])
        if kv_rows is not None and not np.array_equal(kv_rows, np.arange(first, first + rows)):
            return self._run_gathered(session, feeds, kv_rows)
        keep = self.signature.input(fmt.LOGITS_TO_KEEP)
        kept = len(feeds[keep.name]) if keep is not None and keep.name in feeds else 1
        binding, results = self._binding(spec, session, first, rows, kept)
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        session.run_with_iobinding(binding)
        return results  # the binding's buffers: valid until the next run

    def _binding(self, spec: Specialization, session: Any, first: int, rows: int,
                 kept: int) -> tuple[Any, dict[str, np.ndarray]]:
        """An IO binding with the KV rows [first, first + rows) bound in place and buffers for the
        other outputs (logits[, proposals]) of this step's shape, made once per shape and reused
        (a step then binds only its feeds)."""
        import onnxruntime as ort

        key = (spec.name, first, rows, kept)
        if key not in self._bindings:
            binding = session.io_binding()
            for name, buffer in self._view(first, first + rows).items():
                binding.bind_ortvalue_input(name, buffer)
                binding.bind_ortvalue_output(self._retained[name], buffer)
            for name, weights in self.lora.items():
                binding.bind_cpu_input(name, weights)
            symbols = {**spec.symbols, "batch_size": rows, "num_logits_to_keep": kept}
            results = {}
            for v in self._results:
                shape = [int(symbols[d]) if isinstance(d, str) else int(d) for d in v.shape]
                results[v.name] = np.empty(shape, dtype=np.dtype(v.dtype))
                binding.bind_ortvalue_output(v.name, ort.OrtValue.ortvalue_from_numpy(results[v.name]))
            self._bindings[key] = (binding, results)
        return self._bindings[key]

    def _view(self, start: int, stop: int) -> dict[str, Any]:
        """OrtValues over rows [start, stop) of every KV buffer (numpy views: ORT writes into them)."""
        import onnxruntime as ort

        if (start, stop) not in self._views:
            self._views[(start, stop)] = {name: ort.OrtValue.ortvalue_from_numpy(buffer[start:stop])
                                          for name, buffer in self._kv.items()}
        return self._views[(start, stop)]

    def _run_gathered(self, session: Any, feeds: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
        """KV rows that are not one contiguous range: copy them out, run, copy them back."""
        past = {name: np.ascontiguousarray(buffer[rows]) for name, buffer in self._kv.items()}
        results = [v.name for v in self._results]
        names = [*results, *(self._retained[n] for n in past)]
        values = dict(zip(names, session.run(names, {**feeds, **past, **self.lora})))
        for name in past:
            self._kv[name][rows] = values[self._retained[name]]
        return {name: values[name] for name in results}
