"""The target plugin contract: one class per target, found by name through the ``pipeline.targets`` entry points.

A target answers every question the rest of the house asks about it: its hw schema (which
also names its compile pass; keys it adds to other nodes, like compile.dry_run, are declared
with ``pass_api.config_schema`` in its modules), the files its package holds beyond the
program, whether its device is here and which runtime runs its packages, what validation
compares where the device is absent (the program's ONNX view), how its runs are labelled, the
hw values it chooses for a model (``choose``), and its provenance. Generic code asks
``find_target(name)``, never ``if name == ...``.

Its half at run time is a Session class registered under the same name in the
``pipeline.sessions`` entry points (runtime/sessions): a package's manifest names its target,
and the runtime opens it with that target's session, as ExecuTorch's runtime picks a backend
from the serialized program. Standard library and the runtime's package format only: the
engine's cheap paths import it.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

from runtime.package_format import ONNXRUNTIME

TARGETS = "pipeline.targets"
# Where a package's own target cannot run it here, ONNX Runtime runs the program's ONNX view.
ONNX_VIEW_RUNNER = ONNXRUNTIME


@dataclass
class HwSchema:
    """What every target's hw schema has first: the target's name and its compile pass (a subclass
    sets both defaults, written there once, and adds its own keys after them)."""

    target: str = ""
    compile_pass: str = ""


FLOAT32, FLOAT16, MXFP6, MXINT8 = "float32", "float16", "mxfp6", "mxint8"


@dataclass(frozen=True)
class Numerics:
    """How a lossy program stores values: activations, MatMul weights, the KV cache; node outputs kept fp32."""

    activations: str = FLOAT32                 # float32 | float16
    matmul_weights: str = FLOAT32              # float32 | float16 | mxfp6 | int8 | int4
    kv_cache: str = FLOAT32                    # float32 | float16 | mxint8
    fp32_nodes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """validation.target of its twin: onnx-fp32, onnx-fp16, onnx-fp16-mxfp6, onnx-fp16-mxfp6-kvmxint8, ...
        (onnx-fp32-int4: a CPU program's MatMulNBits weights)"""
        parts = ["onnx", "fp16" if self.activations == FLOAT16 else "fp32"]
        parts += ["mxfp6"] * (self.matmul_weights == MXFP6) + ["kvmxint8"] * (self.kv_cache == MXINT8)
        parts += [self.matmul_weights] * (self.matmul_weights in ("int8", "int4"))
        return "-".join(parts)

    @property
    def mx(self) -> bool:
        return MXFP6 in (self.matmul_weights, self.kv_cache) or MXINT8 in (self.matmul_weights, self.kv_cache)

    def to_json(self) -> dict[str, Any]:
        return {"activations": self.activations, "matmul_weights": self.matmul_weights, "kv_cache": self.kv_cache,
                "fp32_nodes": list(self.fp32_nodes), "label": self.label}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Numerics":
        return cls(d["activations"], d["matmul_weights"], d["kv_cache"], tuple(d.get("fp32_nodes", ())))


class Target:
    """One target. Subclasses set ``hw_schema`` and override what differs from a host target whose
    ONNX Runtime program is its own ONNX view."""

    hw_schema: ClassVar[type]                   # an HwSchema subclass: hw.* of this target
    title: ClassVar[str] = ""                   # what people call it ("AI 100"), in messages
    presets: ClassVar[Mapping[str, Any]] = {}   # hw presets it ships beyond conf/hw (hw=<name>): hw_schema instances
    runtime: ClassVar[str] = ONNX_VIEW_RUNNER   # what its own session needs; enters validate's and benchmark's keys
    label: ClassVar[str] = "package"            # validation.target, benchmark.target: a run of its own session
    lossless: ClassVar[bool] = True             # its own session computes as exported (fp32): logits gated by validate.atol

    @property
    def name(self) -> str:
        return schema_default(self.hw_schema, "target")

    @property
    def compile_pass(self) -> str:
        return schema_default(self.hw_schema, "compile_pass")

    def device_present(self) -> bool:
        """Whether this machine can run the target's packages on its device (cheap: imports nothing heavy)."""
        return True

    def absent_reason(self) -> str:
        """What is missing here when ``device_present()`` is False (one clause)."""
        return f"no {self.name} device on this machine"

    def runner(self) -> str:
        """What runs this target's packages here: its own runtime, or ONNX Runtime on the ONNX view."""
        return self.runtime if self.device_present() else ONNX_VIEW_RUNNER

    def runnable(self, package: Path, program: Any) -> str | None:
        """Why the package's program cannot run on the device (e.g. it was planned, not compiled), or None."""
        if program.binary is not None and not (Path(package) / program.binary).exists():
            return f"the package has no compiled program ({program.binary} is absent)"
        return None

    def package_files(self, out: Path, checkpoint: Path, program: Any, config: Mapping[str, Any]) -> None:
        """Files the package holds beyond the program and tokenizer (written into ``out``)."""

    def choose(self, hw: Mapping[str, Any], facts: Any) -> dict[str, tuple[Any, str]]:
        """hw values this target picks for a model (``auto`` settings): {key: (value, why)}; the plan
        uses them for that model's stages and the run prints them."""
        return {}

    def provenance(self, program: Any, versions: Mapping[str, str]) -> dict[str, Any]:
        """The compiler that made the program, for a publication's provenance."""
        return {"kind": ONNX_VIEW_RUNNER, "version": versions.get("onnxruntime")}

    def numerics(self, build: Mapping[str, Any]) -> Numerics | None:
        """What the program computes in, from the settings it was built with (``Program.build``):
        None where it computes as exported (fp32). A lossy target's numerics are what its twin
        (passes/numerics) reproduces on the CPU and what the teacher-forced gate judges."""
        return None


def schema_default(schema: type, name: str) -> Any:
    """A dataclass field's default (a factory's value for lists and dicts)."""
    for f in dataclasses.fields(schema):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise KeyError(f"{schema.__name__}.{name} has no default")
    raise KeyError(f"{schema.__name__} has no field {name!r}")


@functools.lru_cache(maxsize=None)
def entry_points(group: str) -> dict[str, Any]:
    from importlib.metadata import entry_points as found

    return {ep.name: ep for ep in found(group=group)}


def target_names() -> list[str]:
    return sorted(entry_points(TARGETS))


@functools.lru_cache(maxsize=None)
def find_target(name: str) -> Target:
    """The installed target of that name; LookupError (one line) when none is."""
    ep = entry_points(TARGETS).get(name)
    if ep is None:
        raise LookupError(f"hw.target: {name!r} is not allowed; allowed: {' | '.join(target_names()) or 'none installed'}")
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, Target)):
        raise RuntimeError(f"entry point {TARGETS}:{name} = {ep.value} is not a Target class")
    target = cls()
    if target.name != name:
        raise RuntimeError(f"entry point {TARGETS}:{name} = {ep.value} is the target {target.name!r}")
    return target
