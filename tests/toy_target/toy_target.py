"""A toy target, installed by tests only (a fake distribution on PYTHONPATH): the plugin interface end to end.

Its compile pass takes the rewritten ONNX as it is and marks it (``compiled_by: toy`` in the
model's metadata); its session is ONNX Runtime's, which checks the mark and writes a line to
``$TOY_SESSION_LOG`` each time it opens a package, so a test sees that the runtime found this
session by the package's target. No file of the engine, the passes or the runtime names it.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from passes.targets import specializations as spz
from passes.targets.shapes import ShapeParams
from pipeline.pass_api import HwSchema, Target, UserError, cfg_field, config_of, config_schema, hook, register_pass
from runtime.sessions.ort import OrtSession

MARK = ("compiled_by", "toy")


@config_schema("hw")
@dataclass
class ToyHw(HwSchema):
    target: str = "toy"
    compile_pass: str = "compile_toy"
    num_cores: int = 2
    attention: str = "gqa"  # the graph the transform builds for this target: KV written in place


class ToyTarget(Target):
    hw_schema = ToyHw
    title = "toy"
    presets = {"toy": ToyHw()}  # hw=toy
    label = "toy"


@dataclass(frozen=True)
class CompileToyParams(ShapeParams):
    num_cores: int = cfg_field(ToyHw, "num_cores")


@register_pass("compile_toy", params=CompileToyParams, deps=("onnx",), materialize=True)
def compile_toy(inputs: Mapping[str, Any], params: CompileToyParams, out: Path) -> dict[str, Any]:
    import onnx

    from passes.lib import onnx_files
    from passes.lib.files import link_or_copy
    from runtime import package_format as fmt

    src = Path(inputs["onnx"])
    signature, specs = spz.for_graph(src, params, "compile_toy")
    model = onnx.load(str(src / onnx_files.MODEL), load_external_data=False)
    model.metadata_props.add(key=MARK[0], value=MARK[1])
    onnx.save_model(model, str(out / onnx_files.MODEL))
    weights = onnx_files.data_files(src)
    for name in weights:
        link_or_copy(src / name, out / name)
    build = config_of(params)
    build["hw"]["target"] = ToyHw.target
    specs = tuple(dataclasses.replace(s, upper_bound=True) for s in specs)  # one dynamic graph: no padding
    fmt.write_program(out, fmt.Program(ToyHw.target, signature, specs, {s.name: onnx_files.MODEL for s in specs},
                                       tuple(weights), {"intra_op_num_threads": params.num_cores}, build=build))
    return {"marked": True}


@hook("compile_toy", "check")
def check(params: CompileToyParams, facts: Any = None) -> None:
    if params.num_cores < 1:
        raise UserError(f"hw.num_cores: {params.num_cores!r} is not allowed; allowed: an integer >= 1")
    spz.check_plan(params, facts)


class ToySession(OrtSession):
    """ONNX Runtime on a toy package, after checking the toy compile's mark."""

    def __init__(self, package_dir: str | Path, **options: Any):
        import onnx

        super().__init__(package_dir, **options)
        marks = {p.key: p.value for p in onnx.load(str(self.dir / "model.onnx"), load_external_data=False).metadata_props}
        if marks.get(MARK[0]) != MARK[1]:
            raise ValueError(f"{package_dir}: not compiled by the toy target")
        if os.environ.get("TOY_SESSION_LOG"):
            with open(os.environ["TOY_SESSION_LOG"], "a") as f:
                f.write(f"opened {self.dir}\n")
