"""What a build reports: each stage's result, and the build's result filled from what passes declare they provide."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipeline.pass_api import Output, StageFailure, UserError
from pipeline.plan import BuildPlan
from pipeline.store import Store


@dataclass
class StageResult:
    name: str
    role: str = "model"
    key: str | None = None
    status: str = "pending"  # ran | cached | failed
    seconds: float = 0.0
    digest: str | None = None
    why: str | None = None
    note: str | None = None  # e.g. "same key as load"
    error: str | None = None
    peak_rss: int | None = None
    result: dict[str, Any] = field(default_factory=dict)
    built_seconds: float | None = None  # what building it took: this run's, or the record's when cached
    source: str | None = None           # "remote": a hit pulled from store.remote

    @property
    def done(self) -> bool:
        return self.status in ("ran", "cached")

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "role": self.role, "key": self.key, "status": self.status,
            "seconds": round(self.seconds, 3), "digest": self.digest, "why": self.why, "note": self.note,
            "error": self.error, "peak_rss_bytes": self.peak_rss,
            "built_seconds": None if self.built_seconds is None else round(self.built_seconds, 3),
            **({"source": self.source} if self.source else {}),
        }


@dataclass(frozen=True)
class Provided:
    """What one stage gave its build, as its pass declared (``Output``)."""

    key: str
    value: Any                # the output tree's path (Output.tree), else the pass's result dict
    bytes: int | None = None  # a tree's size: the sum of its files' sizes, from its record


@dataclass
class BuildResult:
    stages: list[StageResult]
    store_root: Path
    provided: dict[Output, dict[str, Provided]] = field(default_factory=dict)  # output -> model role -> what it gave
    chosen: list[str] = field(default_factory=list)  # what the plan chose (a target's auto hw values), one line each

    def _given(self, output: Output) -> dict[str, Any]:
        return {role: p.value for role, p in self.provided.get(output, {}).items()}

    @property
    def packages(self) -> dict[str, Path]:
        """role -> package tree."""
        return self._given(Output.package)

    @property
    def package_keys(self) -> dict[str, str]:
        """role -> the package stage's key."""
        return {role: p.key for role, p in self.provided.get(Output.package, {}).items()}

    @property
    def validations(self) -> dict[str, dict[str, Any]]:
        return self._given(Output.validation)

    @property
    def benchmarks(self) -> dict[str, dict[str, Any]]:
        return self._given(Output.benchmark)

    @property
    def evaluations(self) -> dict[str, dict[str, Any]]:
        return self._given(Output.evaluation)

    @property
    def package_bytes(self) -> int | None:
        """The model's package: the sum of its files' sizes (from its record)."""
        model = self.provided.get(Output.package, {}).get("model")
        return model.bytes if model else None

    @property
    def ok(self) -> bool:
        return all(s.done for s in self.stages)

    @property
    def package(self) -> Path | None:
        return self.packages.get("model")

    @property
    def validation(self) -> dict[str, Any] | None:
        return self.validations.get("model")

    def stage(self, name: str) -> StageResult:
        return next(s for s in self.stages if s.name == name)

    def summary(self) -> dict[str, Any]:
        return {
            "stages": [s.summary() for s in self.stages if s.status != "pending"],
            "validation": self.validation,
            "package": str(self.package) if self.package else None,
            "packages": {role: str(p) for role, p in self.packages.items()},
            "validations": self.validations,
            "benchmark": self.benchmarks.get("model"),
            "benchmarks": self.benchmarks,
            "package_bytes": self.package_bytes,
            "chosen": list(self.chosen),
            "store": str(self.store_root),
        }


def build_result(plan: BuildPlan, results: Mapping[str, StageResult], store: Store) -> BuildResult:
    """Each stage's result, and what the stages that provide an output gave: a tree once built or
    hit; a result dict when the pass returned one (a failed validation's too)."""
    res = BuildResult([results[s.name] for s in plan.stages], store.root, chosen=list(plan.notes))
    for s in plan.stages:
        r, output = results[s.name], s.spec.provides
        if output is None:
            continue
        if output.tree and r.done:
            rec = store.records.read(r.key)
            given = Provided(r.key, store.tree_path(r.digest), rec.bytes if rec else 0)
        elif not output.tree and r.result:
            given = Provided(r.key, r.result)
        else:
            continue
        res.provided.setdefault(output, {})[s.role] = given
    return res


def one_line(exc: BaseException) -> str:
    """An error as a stage's result says it: its first line, with its type unless it is the user's or a stage's."""
    text = str(exc).strip().splitlines()
    head = text[0] if text else ""
    if isinstance(exc, (StageFailure, UserError)):
        return head
    return f"{type(exc).__name__}: {head}" if head else type(exc).__name__
