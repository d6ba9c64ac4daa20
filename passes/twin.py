"""Pass `twin`: the numerics twin of a lossy program, the ONNX that ONNX Runtime runs as the target computes.

Input ``program``: a compile stage's folder. Its target (the plugin named in program.json)
says, from the settings the program was built with, what the program computes in
(``Target.numerics``: fp16 activations, MXFP6 MatMul weights, an MXINT8 KV cache, node
outputs kept fp32). Where that is lossy, the program's ONNX view (the exact graph handed to the
compiler) is rewritten by passes.numerics.twin into a graph of the same signature and saved
here with a program.json that ONNX Runtime opens (``validation_target``: the twin's label,
e.g. ``onnx-fp16-mxfp6``). Where the program computes as exported, only twin.json is written
(``lossless: true``): validation runs the package itself.

The key holds the numerics settings through the input (program.json records them) and the
target's code (kind="target"), so a changed setting or rounding makes a new twin, and the
same settings reuse it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.pass_api import REQUIRED, Needs, cfg_field, find_target, register_pass

TWIN_JSON = "twin.json"


@dataclass(frozen=True)
class TwinParams:
    target: str = cfg_field("hw.target", REQUIRED, kind="target")


@register_pass("twin", params=TwinParams, deps=("onnx", "onnx_ir", "numpy"), materialize=True,
               needs=Needs(modules=("onnx_ir",)))  # a lossy twin writes a weight copy; a lossless one a file
def twin(inputs: Mapping[str, Any], params: TwinParams, out: Path) -> dict[str, Any]:
    from passes.lib import onnx_files
    from passes.numerics.twin import make_twin
    from runtime import package_format as fmt

    src = Path(inputs["program"])
    program = fmt.read_program(src)
    numerics = find_target(program.target).numerics(program.build)
    if numerics is None:
        record = {"lossless": True, "label": None, "numerics": None}
        fmt.write_json(out / TWIN_JSON, record)
        return record
    files = set(program.graphs.values())
    if files != {onnx_files.MODEL}:
        raise RuntimeError(f"twin: the program's ONNX view must be one {onnx_files.MODEL} (it has {sorted(files)})")
    model = onnx_files.load_ir(src)
    counts = make_twin(model, numerics, [v.name for v in program.signature.past_kv()])
    onnx_files.save_ir(model, out)
    del model
    fmt.write_program(out, dataclasses.replace(program, binary=None, validation_target=numerics.label))
    record = {"lossless": False, "label": numerics.label, "numerics": numerics.to_json(), "changed": counts}
    fmt.write_json(out / TWIN_JSON, record)
    return record
