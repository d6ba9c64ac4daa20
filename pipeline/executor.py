"""The executor: one topological walk that hits, runs or cuts off each stage.

A stage's key needs only its inputs' digests. A hit takes the digest from the action record
and runs nothing; a miss asks for its inputs' values (a tree on disk, or an in-memory value
computed on demand, once per process and key), runs the pass, stores the output and writes
the record last. Equal output bytes give an equal digest, so downstream keys stay equal.
Two stages with one key (the same model in two roles) build once. What happens around a
pass (progress lines, timing, faults, forcing) is the instruments' business.
"""
from __future__ import annotations

import contextlib
import gc
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipeline.graph import Stage
from pipeline.instruments import Instrument
from pipeline.keys import canonical_params, explain, ingredients, key_of
from pipeline.pass_api import StageFailure, UserError
from pipeline.plan import BuildPlan
from pipeline.store import Store, now_iso, remove_tree
from pipeline.store.maintenance import tree_bytes


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

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "role": self.role, "key": self.key, "status": self.status,
            "seconds": round(self.seconds, 3), "digest": self.digest, "why": self.why, "note": self.note,
            "error": self.error, "peak_rss_bytes": self.peak_rss,
            "built_seconds": None if self.built_seconds is None else round(self.built_seconds, 3),
            **({"source": self.source} if self.source else {}),
        }


@dataclass
class BuildResult:
    stages: list[StageResult]
    store_root: Path
    packages: dict[str, Path] = field(default_factory=dict)          # role -> package tree
    package_keys: dict[str, str] = field(default_factory=dict)       # role -> the package stage's key
    validations: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> validation result
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)   # role -> benchmark result
    package_bytes: int | None = None  # the model's package: the sum of its files' sizes (from its record)

    @property
    def ok(self) -> bool:
        return all(s.status in ("ran", "cached") for s in self.stages)

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
            "validations": dict(self.validations),
            "benchmark": self.benchmarks.get("model"),
            "benchmarks": dict(self.benchmarks),
            "package_bytes": self.package_bytes,
            "store": str(self.store_root),
        }


class Executor:
    def __init__(self, plan: BuildPlan, instruments: Sequence[Instrument] = (), run_dir: Path | None = None):
        self.plan = plan
        self.store = Store(plan.store_root, plan.memo)
        self.remote = None
        if plan.remote:
            from pipeline.store.remote import Remote

            self.remote = Remote(plan.remote["url"], plan.remote["options"], plan.remote["push"])
        self.instruments = list(instruments)
        self.run_dir = run_dir
        self.results = {s.name: StageResult(s.name, s.role) for s in plan.stages}
        self.digests: dict[str, str] = {}
        self.ingr: dict[str, dict[str, Any]] = {}
        self.hits: dict[str, dict[str, Any] | None] = {}
        self.values: dict[str, Any] = {}      # in-memory outputs by key
        self.ran: dict[str, str] = {}         # key -> the stage that built it in this run

    # ---- keys
    def _key(self, stage: Stage) -> str | None:
        """The stage's key if every input digest is known now, else None."""
        if stage.name in self.ingr:
            return self.results[stage.name].key
        ups = {inp: self.digests.get(up) for inp, up in stage.inputs.items()}
        if any(d is None for d in ups.values()):
            return None
        self.ingr[stage.name] = self._ingredients(stage, ups)
        key = key_of(self.ingr[stage.name])
        self.results[stage.name].key = key
        return key

    def _ingredients(self, stage: Stage, ups: dict[str, str]) -> dict[str, Any]:
        keyed, _locations = canonical_params(self.plan.params[stage.name], self.store.memo)
        return ingredients(stage.spec, keyed, ups)

    def _forced(self, stage: Stage) -> str | None:
        return next((why for i in self.instruments if (why := i.force(stage))), None)

    def _lookup(self, stage: Stage) -> dict[str, Any] | None:
        if stage.name not in self.hits:
            key = self._key(stage)
            if key is None:
                return None
            self.hits[stage.name] = None if self._forced(stage) else self.store.lookup(key)
        return self.hits[stage.name]

    def _materialized(self, stage: Stage) -> bool:
        return stage.spec.materialized(self.plan.params[stage.name])

    def _consumer_state(self, stage: Stage) -> str:
        """'hit', 'miss' or 'unknown' (an input's digest is not known yet)."""
        if self._key(stage) is None:
            return "unknown"
        if self._forced(stage):
            return "miss"
        if not self._materialized(stage):  # needed iff one of its own consumers misses
            states = [self._consumer_state(self.plan.by_name[c]) for c in self.plan.consumers[stage.name]]
            return "miss" if "miss" in states else "hit" if all(s == "hit" for s in states) else "unknown"
        return "hit" if self._lookup(stage) else "miss"

    def may_run(self) -> list[Stage]:
        """Stages that are not known hits now: their preconditions are checked up front.

        A dry walk: each hit's recorded digest keys its consumers, as in the walk itself, so a
        run whose every stage hits needs nothing (not even free disk)."""
        digests: dict[str, str] = {}
        hit: dict[str, bool] = {}
        for s in self.plan.stages:
            ups = {inp: digests.get(up) for inp, up in s.inputs.items()}
            if any(d is None for d in ups.values()) or self._forced(s):
                hit[s.name] = False
                continue
            key = key_of(self._ingredients(s, ups))
            if not self._materialized(s):
                digests[s.name] = key
            elif rec := self.store.lookup(key):
                digests[s.name], hit[s.name] = rec["digest"], True
            else:
                hit[s.name] = False
        for s in reversed(self.plan.stages):  # an in-memory stage runs iff a consumer runs
            if s.name not in hit:
                hit[s.name] = all(hit[c] for c in self.plan.consumers[s.name])
        return [s for s in self.plan.stages if not hit[s.name]]

    # ---- walk
    def run(self) -> BuildResult:
        with self.store.building():  # gc waits while this build runs
            return self._walk()

    def _walk(self) -> BuildResult:
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
                    self._cached(stage)
        except _Stop:
            pass
        return self._result()

    def _cached(self, stage: Stage) -> None:
        r = self.results[stage.name]
        r.status, r.seconds = "cached", 0.0
        if r.key in self.ran and self.ran[r.key] != stage.name:
            r.note = f"same key as {self.ran[r.key]}"
        for i in self.instruments:
            i.on_cached(stage, r)

    def _visit_in_memory(self, stage: Stage) -> None:
        key = self._key(stage)
        assert key is not None, f"{stage.name}: inputs unknown after walk"
        self.digests[stage.name] = key
        state = self._consumer_state(stage)
        if state == "miss" and self._forced(stage):
            self._value(stage)
        elif state == "hit":
            self._cached(stage)
        # else: run on demand when a consumer runs, inside that consumer's lock, so parallel
        # builds of one key (a sweep's jobs) do not each compute it first

    def _visit_materialized(self, stage: Stage) -> None:
        r = self.results[stage.name]
        key = self._key(stage)
        assert key is not None, f"{stage.name}: inputs unknown after walk"
        rec = self._lookup(stage)
        if rec is None:
            with self.store.lock(key):
                rec = None if self._forced(stage) else self.store.lookup(key)
                if rec is None and self.remote is not None and not self._forced(stage):
                    rec = self._pull(stage, key)
                if rec is None:
                    self._run(stage)
                    return
        r.digest, r.result, r.built_seconds = rec["digest"], rec.get("result") or {}, rec.get("seconds")
        self.digests[stage.name] = rec["digest"]
        self.store.records.note_used(stage.role, self.plan.models[stage.role], stage.name, key)
        self._cached(stage)

    def _pull(self, stage: Stage, key: str) -> dict[str, Any] | None:
        """The remote's record of the key, pulled into the local store (blobs digest-checked), or None.
        A remote that fails or serves a bad blob is reported in the stage's note and the stage is built here."""
        r = self.results[stage.name]
        try:
            rec = self.remote.record(key)
            if rec is None or rec.get("key") != key:
                return None
            self.remote.pull(rec, self.store)
        except Exception as exc:  # noqa: BLE001 - the remote is a cache: on any failure, build
            r.note = f"remote not used: {_one_line(exc)}"
            return None
        rec = self.store.lookup(key)
        if rec is not None:
            r.source, r.note = "remote", f"from {self.remote}"
        return rec

    def _push(self, stage: Stage, rec: dict[str, Any]) -> None:
        if self.remote is None or not self.remote.push_enabled or not rec.get("materialized"):
            return
        try:
            self.remote.push(rec, self.store)
        except Exception as exc:  # noqa: BLE001 - a failed push leaves the local build intact
            self.results[stage.name].note = f"not pushed to {self.remote}: {_one_line(exc)}"

    def _release_inputs(self, stage: Stage) -> None:
        """Drop in-memory values (a loaded model) once every consumer of their stages has been visited."""
        for up in stage.inputs.values():
            key = self.results[up].key
            if key not in self.values:
                continue
            holders = [s for s, r in self.results.items() if r.key == key]
            if all(self.results[c].status != "pending" for h in holders for c in self.plan.consumers[h]):
                del self.values[key]
                gc.collect()

    def _value(self, stage: Stage) -> Any:
        """The stage's output value: its tree, or its in-memory value (run on demand, once per key)."""
        if self._materialized(stage):
            return self.store.tree_path(self.digests[stage.name])
        key = self.results[stage.name].key
        if key not in self.values:
            self._run(stage)
        elif self.results[stage.name].status == "pending":  # built by another stage with this key
            self._cached(stage)
        return self.values[key]

    def _why(self, stage: Stage) -> str:
        r = self.results[stage.name]
        old = self.store.records.latest(stage.role, self.plan.models[stage.role], stage.name)
        why = explain(old, self.ingr[stage.name], dict(stage.inputs), stage.bind)
        forced = self._forced(stage)
        if forced:
            why = forced + ("" if old and old.get("key") == r.key else f"; {why}")
        elif not self._materialized(stage) and old and old.get("key") == r.key:
            why = f"in-memory output needed by {', '.join(self.plan.consumers[stage.name])}"
        return why

    def _point(self, stage: Stage, name: str) -> None:
        for i in self.instruments:
            i.point(stage, name)

    def _run(self, stage: Stage) -> None:
        r = self.results[stage.name]
        key = r.key
        r.why = self._why(stage)
        inputs = {inp: self._value(self.plan.by_name[up]) for inp, up in stage.inputs.items()}
        for i in self.instruments:
            i.before_run(stage, r)
        materialized = self._materialized(stage)
        tmp = self.store.new_tmp(stage.name) if materialized else None
        out = tmp / "out" if tmp else None
        if out:
            out.mkdir()
        try:
            self._point(stage, "before_run")
            with contextlib.ExitStack() as around:
                for i in self.instruments:
                    around.enter_context(i.around_run(stage, r))
                value = stage.spec.fn(inputs, self.plan.params[stage.name], out)
            self._point(stage, "after_run")
            if materialized:
                digest, files = self.store.ingest(out, lambda p: self._point(stage, p))
                result = value if isinstance(value, dict) else {}
            else:
                digest, files, result = key, {}, {}
            record = {
                "stage": stage.name, "pass": stage.spec.name, "role": stage.role, "model": self.plan.models[stage.role],
                "key": key, "ingredients": self.ingr[stage.name], "digest": digest, "materialized": materialized,
                "files": files, "seconds": round(r.seconds, 3), "peak_rss_bytes": r.peak_rss, "created": now_iso(),
                "result": result, "why": r.why,
            }
            self.store.records.write(record)  # last: a build without its record is a miss, never a partial hit
        except Exception as exc:  # noqa: BLE001 - any pass failure is reported, never cached
            r.status, r.error = "failed", _one_line(exc)
            if isinstance(exc, StageFailure):
                r.result = exc.result
            if (full := self.store.full_disk(exc)) is not None:
                r.error = f"{full} ({r.error})"
            self._keep_traceback(stage, exc)
            for i in self.instruments:
                i.on_failed(stage, r)
            raise _Stop() from exc
        finally:
            if tmp is not None:
                remove_tree(tmp)
        if not materialized:
            self.values[key] = value
        r.status, r.digest, r.result, r.built_seconds = "ran", digest, result, r.seconds
        self.digests[stage.name] = digest
        self.ran.setdefault(key, stage.name)
        self._push(stage, record)
        for i in self.instruments:
            i.after_run(stage, r)

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
            if s.spec.provides == "package" and r.status in ("ran", "cached"):
                res.packages[s.role] = self.store.tree_path(r.digest)
                res.package_keys[s.role] = r.key
                if s.role == "model":
                    res.package_bytes = tree_bytes(self.store.records.read(r.key) or {})
            if s.spec.provides == "validation" and r.result:
                res.validations[s.role] = r.result
            if s.spec.provides == "benchmark" and r.result:
                res.benchmarks[s.role] = r.result
        return res


class _Stop(Exception):
    """A stage failed: the walk ends, results so far are reported."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    head = text[0] if text else ""
    if isinstance(exc, (StageFailure, UserError)):
        return head
    return f"{type(exc).__name__}: {head}" if head else type(exc).__name__
