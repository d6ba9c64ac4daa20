"""The executor: one topological walk that hits, runs or cuts off each stage.

A stage's key needs only its inputs' digests (pipeline.stage_keys). A hit takes the digest
from the action record and runs nothing; a miss asks the remote tier, then asks for its
inputs' values (a tree on disk, or an in-memory value computed on demand, once per process
and key) and runs the pass (pipeline.stage_run). Equal output bytes give an equal digest, so
downstream keys stay equal. Two stages with one key (the same model in two roles) build once.
What happens around a pass (progress lines, timing, faults, forcing) is the instruments' business.
"""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Sequence

from pipeline.graph import Stage
from pipeline.instruments import Instrument
from pipeline.plan import BuildPlan
from pipeline.remote_tier import RemoteTier
from pipeline.results import BuildResult, StageResult, build_result
from pipeline.stage_keys import StageKeys
from pipeline.stage_run import StageRun, Stop
from pipeline.store import ActionRecord, Store

__all__ = ["BuildResult", "Executor", "StageResult"]


class Executor:
    def __init__(self, plan: BuildPlan, instruments: Sequence[Instrument] = (), run_dir: Path | None = None):
        self.plan = plan
        self.store = Store(plan.store_root, plan.memo)
        self.remote = RemoteTier.of(plan, self.store)
        self.instruments = list(instruments)
        self.keys = StageKeys(plan, self.store, self._forced)
        self.stage_run = StageRun(plan, self.store, self.instruments, run_dir)
        self.results = {s.name: StageResult(s.name, s.role) for s in plan.stages}
        self.digests: dict[str, str] = {}
        self.hits: dict[str, ActionRecord | None] = {}
        self.values: dict[str, Any] = {}      # in-memory outputs by key
        self.ran: dict[str, str] = {}         # key -> the stage that built it in this run

    def may_run(self) -> list[Stage]:
        """Stages that are not known hits now (pipeline.stage_keys.StageKeys.may_run)."""
        return self.keys.may_run()

    def run(self) -> BuildResult:
        with self.store.building():  # gc waits while this build runs
            try:
                self._walk()
            except Stop:
                pass
            return build_result(self.plan, self.results, self.store)

    # ---- keys and hits
    def _key(self, stage: Stage) -> str | None:
        key = self.keys.key(stage, self.digests)
        self.results[stage.name].key = key
        return key

    def _forced(self, stage: Stage) -> str | None:
        return next((why for i in self.instruments if (why := i.force(stage))), None)

    def _lookup(self, stage: Stage) -> ActionRecord | None:
        if stage.name not in self.hits:
            key = self._key(stage)
            if key is None:
                return None
            self.hits[stage.name] = None if self._forced(stage) else self.store.lookup(key)
        return self.hits[stage.name]

    def _consumer_state(self, stage: Stage) -> str:
        """'hit', 'miss' or 'unknown' (an input's digest is not known yet)."""
        if self._key(stage) is None:
            return "unknown"
        if self._forced(stage):
            return "miss"
        if not self.plan.materialized(stage):  # needed iff one of its own consumers misses
            states = [self._consumer_state(self.plan.by_name[c]) for c in self.plan.consumers[stage.name]]
            return "miss" if "miss" in states else "hit" if all(s == "hit" for s in states) else "unknown"
        return "hit" if self._lookup(stage) else "miss"

    # ---- the walk
    def _walk(self) -> None:
        for stage in self.plan.stages:
            if self.plan.materialized(stage):
                self._visit_materialized(stage)
            else:
                self._visit_in_memory(stage)
            self._release_inputs(stage)
        for stage in self.plan.stages:  # in-memory outputs nobody needed
            if self.results[stage.name].status == "pending" and stage.name in self.digests:
                self._cached(stage)

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
                    rec = self.remote.pull(key, r)
                if rec is None:
                    self._run(stage)
                    return
        r.digest, r.result, r.built_seconds = rec.digest, rec.result, rec.seconds
        self.digests[stage.name] = rec.digest
        self.store.records.note_used(stage.role, self.plan.models[stage.role], stage.name, key)
        self._cached(stage)

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
        if self.plan.materialized(stage):
            return self.store.tree_path(self.digests[stage.name])
        key = self.results[stage.name].key
        if key not in self.values:
            self._run(stage)
        elif self.results[stage.name].status == "pending":  # built by another stage with this key
            self._cached(stage)
        return self.values[key]

    def _run(self, stage: Stage) -> None:
        r = self.results[stage.name]
        r.why = self.keys.why(stage)
        inputs = {inp: self._value(self.plan.by_name[up]) for inp, up in stage.inputs.items()}
        record, value = self.stage_run.run(stage, r, inputs, self.keys.ingredients[stage.name])
        if not record.materialized:
            self.values[record.key] = value
        self.digests[stage.name] = record.digest
        self.ran.setdefault(record.key, stage.name)
        if self.remote is not None:
            self.remote.push(record, r)
        for i in self.instruments:
            i.after_run(stage, r)
