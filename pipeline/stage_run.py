"""One run of a stage's pass: in tmp/, with the instruments around it, its output stored and its record written last.

A failure is reported in the stage's result (one line, the traceback kept in the run
folder, a full disk said as such) and never recorded: the walk stops there (``Stop``).
"""
from __future__ import annotations

import contextlib
import traceback
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.graph import Stage
from pipeline.instruments import Instrument
from pipeline.pass_api import StageFailure
from pipeline.plan import BuildPlan
from pipeline.results import StageResult, one_line
from pipeline.store import ActionRecord, Store, now_iso, remove_tree


class Stop(Exception):
    """A stage failed: the walk ends, results so far are reported."""


class StageRun:
    def __init__(self, plan: BuildPlan, store: Store, instruments: Sequence[Instrument], run_dir: Path | None):
        self.plan = plan
        self.store = store
        self.instruments = instruments
        self.run_dir = run_dir

    def run(self, stage: Stage, r: StageResult, inputs: Mapping[str, Any],
            ingredients: dict[str, Any]) -> tuple[ActionRecord, Any]:
        """Run the pass on its inputs' values: its record (written) and its output value; Stop on failure."""
        for i in self.instruments:
            i.before_run(stage, r)
        materialized = self.plan.materialized(stage)
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
                owned = tuple(sorted(stage.spec.owned(out))) if stage.spec.owned else ()
                digest, files = self.store.ingest(out, lambda p: self._point(stage, p), owned)
                result = value if isinstance(value, dict) else {}
            else:
                digest, files, result, owned = r.key, {}, {}, ()
            record = ActionRecord(
                stage=stage.name, pass_name=stage.spec.name, role=stage.role, model=self.plan.models[stage.role],
                key=r.key, ingredients=ingredients, digest=digest, materialized=materialized, files=files,
                seconds=round(r.seconds, 3), peak_rss_bytes=r.peak_rss, created=now_iso(precise=True), result=result, why=r.why,
                owned=owned,
            )
            self.store.records.write(record)  # last: a build without its record is a miss, never a partial hit
        except Exception as exc:  # noqa: BLE001 - any pass failure is reported, never cached
            self._failed(stage, r, exc)
            raise Stop() from exc
        finally:
            if tmp is not None:
                remove_tree(tmp)
        r.status, r.digest, r.result, r.built_seconds = "ran", digest, result, r.seconds
        return record, value

    def _point(self, stage: Stage, name: str) -> None:
        for i in self.instruments:
            i.point(stage, name)

    def _failed(self, stage: Stage, r: StageResult, exc: Exception) -> None:
        r.status, r.error = "failed", one_line(exc)
        if isinstance(exc, StageFailure):
            r.result = exc.result
        if (full := self.store.full_disk(exc)) is not None:
            r.error = f"{full} ({r.error})"
        if self.run_dir is not None:
            path = Path(self.run_dir) / f"{stage.name}.error.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(traceback.format_exception(exc)))
        for i in self.instruments:
            i.on_failed(stage, r)
