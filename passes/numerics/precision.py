"""Mixed precision found, not hand-written: the node outputs an fp16 program must keep in fp32.

A probe copy of the graph returns, besides its own outputs, max |x| of every float value a
top-level node produces (ReduceMax(Abs(x))). ONNX Runtime runs it in fp32 over the
evaluation text, segment by segment in prefill chunks with the KV cache carried (every
position's activations are computed in a prefill), and the node outputs whose largest
magnitude comes within ``HEADROOM`` of fp16's largest finite value (65504) are the ones to keep
in fp32: a residual sum or a norm's square that leaves fp16's range is inf on the device and
NaN one operator later. The reference library writes such lists by hand per model size
(FP32NodeInstanceNames); the target's compile plan takes this one instead.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

FP16_MAX = 65504.0
# Keep a value fp32 once it comes within a factor 2 of fp16's range: fp16 rounding upstream moves
# values a little, and the text evaluated is a sample of what users will feed.
HEADROOM = 2.0
PROBE = "__amax__"


def find_fp32_nodes(model: Any, program: Any, ids: Sequence[int], tokens: int, work: Path) -> dict[str, Any]:
    """Run the probe of ``model`` (onnx_ir, fp32; left unchanged) with ``program``'s signature and
    shapes over ``ids[:tokens]``; {names: [...], amax: {name: value}} of the node outputs to keep."""
    from passes.lib import onnx_files
    from runtime import package_format as fmt
    from runtime.sessions.ort import OrtSession

    names = _add_probes(model)
    work.mkdir(parents=True)
    try:
        onnx_files.save_ir(model, work)
        fmt.write_program(work, program)
        session = OrtSession(work, program=program)
        session.output_names = [*session.output_names, *(PROBE + n for n in names)]
        amax = _run(session, program, ids, tokens, names)
        del session
    finally:
        _remove_probes(model, names)
        shutil.rmtree(work, ignore_errors=True)
    keep = [n for n in names if not amax[n] < FP16_MAX / HEADROOM]  # NaN counts as out of range
    return {"names": keep, "amax": {n: float(amax[n]) for n in keep}, "values_probed": len(names),
            "threshold": FP16_MAX / HEADROOM}


def _add_probes(model: Any) -> list[str]:
    import onnx_ir as ir

    from passes.numerics.twin import float_node_outputs

    graph = model.graph
    by_name = {v.name: v for node in graph for v in node.outputs}
    names = float_node_outputs(model)
    for name in names:
        value = by_name[name]
        absolute = ir.node("Abs", [value], name=f"{PROBE}abs_{name}", outputs=[ir.Value(name=f"{PROBE}abs_{name}")])
        reduce = ir.node("ReduceMax", [absolute.outputs[0]], {"keepdims": 0}, name=f"{PROBE}max_{name}",
                         outputs=[ir.Value(name=PROBE + name, type=ir.TensorType(ir.DataType.FLOAT),
                                           shape=ir.Shape([]))])
        graph.append(absolute)
        graph.append(reduce)
        graph.outputs.append(reduce.outputs[0])
    return names


def _remove_probes(model: Any, names: list[str]) -> None:
    graph = model.graph
    probes = {PROBE + n for n in names}
    graph.outputs[:] = [v for v in graph.outputs if v.name not in probes]
    for node in [n for n in graph if (n.name or "").startswith(PROBE)][::-1]:
        graph.remove(node, safe=False)


def _run(session: Any, program: Any, ids: Sequence[int], tokens: int, names: list[str]) -> dict[str, float]:
    from passes.numerics.gate import segments
    from runtime import package_format as fmt
    from runtime.generate import step_feeds

    sig = program.signature
    prefill = program.spec(fmt.PREFILL)
    amax = {n: 0.0 for n in names}
    for segment in segments(ids, tokens, program.ctx_len - 1):
        kv = session.new_kv()
        for first in range(0, len(segment), prefill.seq_len):
            part = segment[first:first + prefill.seq_len]
            feeds = step_feeds(session, prefill, np.asarray([part], dtype=np.int64),
                               np.arange(first, first + len(part), dtype=np.int64)[None, :], kv)
            out = session.run(prefill, feeds)
            for past in sig.past_kv():
                kv[past.name] = out[sig.retained(past).name]
            for n in names:
                value = float(out[PROBE + n])
                amax[n] = value if value != value else max(amax[n], value)
    return amax
