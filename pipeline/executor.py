"""The executor: one topological walk that hits, runs or cuts off each stage.

A stage's key needs only its inputs' digests. A hit takes the digest from the action record
and runs nothing; a miss asks for its inputs' values (a tree on disk, or an in-memory value
computed on demand, once per process), runs the pass, stores the output and writes the
record last. Equal output bytes give an equal digest, so downstream keys stay equal.
"""
from __future__ import annotations

import gc
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline import faults
from pipeline.graph import Stage
from pipeline.instruments import Measure
from pipeline.keys import canonical_params, explain, ingredients, key_of
from pipeline.pass_api import StageFailure, UserError
from pipeline.plan import BuildPlan
from pipeline.store import Store, now_iso, remove_tree


@dataclass
class StageResult:
    name: str
    key: str | None = None
    status: str = "pending"  # ran | cached | failed
    seconds: float = 0.0
    digest: str | None = None
    why: str | None = None
    error: str | None = None
    peak_rss: int | None = None
    result: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "key": self.key, "status": self.status, "seconds": round(self.seconds, 3),
            "digest": self.digest, "why": self.why, "error": self.error, "peak_rss_bytes": self.peak_rss,
        }


@dataclass
class BuildResult:
    stages: list[StageResult]
    store_root: Path
    package: Path | None = None
    validation: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return all(s.status in ("ran", "cached") for s in self.stages)

    def stage(self, name: str) -> StageResult:
        return next(s for s in self.stages if s.name == name)

    def summary(self) -> dict[str, Any]:
        return {
            "stages": [s.summary() for s in self.stages if s.status != "pending"],
            "validation": self.validation,
            "package": str(self.package) if self.package else None,
            "store": str(self.store_root),
        }


class Executor:
    def __init__(self, plan: BuildPlan, echo: Callable[[str], None] = print, run_dir: Path | None = None):
        self.plan = plan
        self.store = Store(plan.store_root)
        self.echo = echo
        self.run_dir = run_dir
        self.results = {s.name: StageResult(s.name) for s in plan.stages}
        self.digests: dict[str, str] = {}
        self.ingr: dict[str, dict[str, Any]] = {}
        self.locations: dict[str, dict[str, str]] = {}
        self.hits: dict[str, dict[str, Any] | None] = {}
        self.values: dict[str, Any] = {}

    # ---- keys
    def _key(self, stage: Stage) -> str | None:
        """The stage's key if every input digest is known now, else None."""
        if stage.name in self.ingr:
            return self.results[stage.name].key
        ups = {inp: self.digests.get(up) for inp, up in stage.inputs.items()}
        if any(d is None for d in ups.values()):
            return None
        params = self.plan.params[stage.name]
        keyed, self.locations[stage.name] = canonical_params(params, self.store.memo)
        self.ingr[stage.name] = ingredients(stage.spec, keyed, ups)
        key = key_of(self.ingr[stage.name])
        self.results[stage.name].key = key
        return key

    def _lookup(self, stage: Stage) -> dict[str, Any] | None:
        if stage.name not in self.hits:
            key = self._key(stage)
            if key is None:
                return None
            forced = stage.name in self.plan.force
            self.hits[stage.name] = None if forced else self.store.lookup(key)
        return self.hits[stage.name]

    def _materialized(self, stage: Stage) -> bool:
        return stage.spec.materialized(self.plan.params[stage.name])

    def _consumer_state(self, stage: Stage) -> str:
        """'hit', 'miss' or 'unknown' (an input's digest is not known yet)."""
        if self._key(stage) is None:
            return "unknown"
        if stage.name in self.plan.force:
            return "miss"
        if not self._materialized(stage):  # needed iff one of its own consumers misses
            states = [self._consumer_state(self.plan.by_name[c]) for c in self.plan.consumers[stage.name]]
            return "miss" if "miss" in states else "hit" if all(s == "hit" for s in states) else "unknown"
        return "hit" if self._lookup(stage) else "miss"

    def may_run(self) -> list[Stage]:
        """Stages that are not known hits now: their preconditions are checked up front."""
        return [s for s in self.plan.stages if self._consumer_state(s) != "hit"]

    # ---- walk
    def run(self) -> BuildResult:
        try:
            for stage in self.plan.stages:
                if self._materialized(stage):
                    self._visit_materialized(stage)
                else:
                    self._visit_in_memory(stage)
                self._release_inputs(stage)
            for stage in self.plan.stages:  # in-memory outputs nobody needed
                r = self.results[stage.name]
                if r.status == "pending" and stage.name in self.digests:
                    r.status = "cached"
                    self.echo(f"{stage.name}: cached")
        except _Stop:
            pass
        return self._result()

    def _visit_in_memory(self, stage: Stage) -> None:
        key = self._key(stage)
        assert key is not None, f"{stage.name}: inputs unknown after walk"
        self.digests[stage.name] = key
        state = self._consumer_state(stage)
        if state == "miss":
            self._value(stage)
        elif state == "hit":
            self.results[stage.name].status = "cached"
            self.echo(f"{stage.name}: cached")
        # else: decided later, run on demand if a consumer misses

    def _visit_materialized(self, stage: Stage) -> None:
        r = self.results[stage.name]
        key = self._key(stage)
        assert key is not None, f"{stage.name}: inputs unknown after walk"
        rec = self._lookup(stage)
        if rec is None:
            with self.store.lock(key):
                rec = None if stage.name in self.plan.force else self.store.lookup(key)
                if rec is None:
                    self._run(stage)
                    return
        r.status, r.digest, r.result = "cached", rec["digest"], rec.get("result") or {}
        r.seconds = 0.0
        self.digests[stage.name] = rec["digest"]
        self.echo(f"{stage.name}: cached")

    def _release_inputs(self, stage: Stage) -> None:
        """Drop in-memory values (a loaded model) once every consumer has been visited."""
        for up in stage.inputs.values():
            if up in self.values and all(self.results[c].status != "pending" for c in self.plan.consumers[up]):
                del self.values[up]
                gc.collect()

    def _value(self, stage: Stage) -> Any:
        """The stage's output value: its tree, or its in-memory value (run on demand)."""
        if self._materialized(stage):
            return self.store.tree_path(self.digests[stage.name])
        if stage.name not in self.values:
            self._run(stage)
        return self.values[stage.name]

    def _why(self, stage: Stage) -> str:
        old = self.store.latest(self.plan.model, stage.name)
        why = explain(old, self.ingr[stage.name], dict(stage.inputs))
        if stage.name in self.plan.force:
            why = "forced by pipeline.force" + ("" if old and old.get("key") == self.results[stage.name].key else f"; {why}")
        elif not self._materialized(stage) and old and old.get("key") == self.results[stage.name].key:
            needers = ", ".join(self.plan.consumers[stage.name])
            why = f"in-memory output needed by {needers}"
        return why

    def _run(self, stage: Stage) -> None:
        r = self.results[stage.name]
        key = r.key
        r.why = self._why(stage)
        inputs = {inp: self._value(self.plan.by_name[up]) for inp, up in stage.inputs.items()}
        self.echo(f"{stage.name}: running ({r.why})")
        materialized = self._materialized(stage)
        tmp = self.store.new_tmp(stage.name) if materialized else None
        out = tmp / "out" if tmp else None
        if out:
            out.mkdir()
        measure = Measure()
        try:
            faults.point(stage.name, "before_run")
            with measure:
                value = stage.spec.fn(inputs, self.plan.params[stage.name], out)
            faults.point(stage.name, "after_run")
            if materialized:
                digest, files = self.store.ingest(out, lambda p: faults.point(stage.name, p))
                result = value if isinstance(value, dict) else {}
            else:
                self.values[stage.name] = value
                digest, files, result = key, {}, {}
        except Exception as exc:  # noqa: BLE001 - any pass failure is reported, never cached
            r.status, r.seconds, r.peak_rss = "failed", measure.seconds, measure.peak_rss
            r.error = _one_line(exc)
            if isinstance(exc, StageFailure):
                r.result = exc.result
            self._keep_traceback(stage, exc)
            self.echo(f"{stage.name}: failed [{r.seconds:.1f} s] {r.error}")
            raise _Stop() from exc
        finally:
            if tmp is not None:
                remove_tree(tmp)
        r.status, r.digest, r.seconds, r.peak_rss, r.result = "ran", digest, measure.seconds, measure.peak_rss, result
        self.digests[stage.name] = digest
        self.store.write_record({
            "stage": stage.name, "pass": stage.spec.name, "model": self.plan.model, "key": key,
            "ingredients": self.ingr[stage.name], "locations": self.locations.get(stage.name, {}),
            "digest": digest, "materialized": materialized, "files": files, "seconds": round(r.seconds, 3),
            "peak_rss_bytes": r.peak_rss, "created": now_iso(), "result": result, "why": r.why,
        })
        self.echo(f"{stage.name}: ran ({r.why}) [{r.seconds:.1f} s, peak RSS {r.peak_rss / 2**20:.0f} MiB]")

    def _keep_traceback(self, stage: Stage, exc: BaseException) -> None:
        if self.run_dir is None:
            return
        path = Path(self.run_dir) / f"{stage.name}.error.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(exc)))

    def _result(self) -> BuildResult:
        res = BuildResult([self.results[s.name] for s in self.plan.stages], self.store.root)
        for s in self.plan.stages:
            r = self.results[s.name]
            if s.spec.name == "package" and r.status in ("ran", "cached"):
                res.package = self.store.tree_path(r.digest)
            if s.spec.name == "validate" and (r.result or r.status == "failed"):
                res.validation = r.result or None
        return res


class _Stop(Exception):
    """A stage failed: the walk ends, results so far are reported."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    head = text[0] if text else ""
    if isinstance(exc, (StageFailure, UserError)):
        return head
    return f"{type(exc).__name__}: {head}" if head else type(exc).__name__
