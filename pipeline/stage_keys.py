"""Stage keys and why a stage runs: a stage's key from its inputs' digests, its ingredients, the "why" line.

A key needs only the digests of a stage's inputs: from a hit's record or from having run the
upstream stage. So a dry walk over the records keys every stage of a fully cached build
without running anything, and finds what may run before the first stage starts.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from pipeline.graph import Stage
from pipeline.keys import canonical_params, explain, ingredients, key_of
from pipeline.plan import BuildPlan
from pipeline.store import Store


class StageKeys:
    def __init__(self, plan: BuildPlan, store: Store, forced: Callable[[Stage], str | None]):
        self.plan = plan
        self.store = store
        self.forced = forced  # a reason to rebuild though the record hits, or None (the instruments')
        self.keys: dict[str, str] = {}                     # stage name -> its key
        self.ingredients: dict[str, dict[str, Any]] = {}   # stage name -> what its key hashes

    def key(self, stage: Stage, digests: Mapping[str, str]) -> str | None:
        """The stage's key if every input digest is known (``digests``: stage name -> output digest), else None."""
        if stage.name not in self.keys:
            ups = {inp: digests.get(up) for inp, up in stage.inputs.items()}
            if any(d is None for d in ups.values()):
                return None
            self.ingredients[stage.name] = self._ingredients(stage, ups)
            self.keys[stage.name] = key_of(self.ingredients[stage.name])
        return self.keys[stage.name]

    def _ingredients(self, stage: Stage, ups: dict[str, str]) -> dict[str, Any]:
        keyed, _locations = canonical_params(self.plan.params[stage.name], self.store.memo)
        return ingredients(stage.spec, keyed, ups)

    def may_run(self) -> list[Stage]:
        """Stages that are not known hits now: their preconditions are checked up front.

        A dry walk: each hit's recorded digest keys its consumers, as in the walk itself, so a
        run whose every stage hits needs nothing (not even free disk)."""
        digests: dict[str, str] = {}
        hit: dict[str, bool] = {}
        for s in self.plan.stages:
            ups = {inp: digests.get(up) for inp, up in s.inputs.items()}
            if any(d is None for d in ups.values()) or self.forced(s):
                hit[s.name] = False
                continue
            key = key_of(self._ingredients(s, ups))
            if not self.plan.materialized(s):
                digests[s.name] = key
            elif rec := self.store.lookup(key):
                digests[s.name], hit[s.name] = rec.digest, True
            else:
                hit[s.name] = False
        for s in reversed(self.plan.stages):  # an in-memory stage runs iff a consumer runs
            if s.name not in hit:
                hit[s.name] = all(hit[c] for c in self.plan.consumers[s.name])
        return [s for s in self.plan.stages if not hit[s.name]]

    def why(self, stage: Stage) -> str:
        """Why a keyed stage runs: forced, needed in memory, its record unusable, or what changed
        since the latest record of its stage for its model (pipeline.keys.explain)."""
        key = self.keys[stage.name]
        old = self.store.records.latest(stage.role, self.plan.models[stage.role], stage.name)
        changed = explain(old, self.ingredients[stage.name], dict(stage.inputs), stage.bind)
        same_key = old is not None and old.key == key
        if forced := self.forced(stage):
            return forced if same_key else f"{forced}; {changed}"
        if not self.plan.materialized(stage) and same_key:
            return f"in-memory output needed by {', '.join(self.plan.consumers[stage.name])}"
        if reason := self.store.records.unusable.get(key):
            return f"record unusable ({reason}): rebuilt"
        return changed
