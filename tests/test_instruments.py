"""Instruments plug in around every pass through the library API, in the order of a stage's life."""
from __future__ import annotations

import contextlib

from pipeline.instruments import Instrument


class Recorder(Instrument):
    def __init__(self):
        self.events = []

    def before_run(self, stage, result):
        self.events.append(("before_run", stage.name, result.why))

    @contextlib.contextmanager
    def around_run(self, stage, result):
        self.events.append(("enter", stage.name))
        yield
        self.events.append(("exit", stage.name))

    def point(self, stage, name):
        self.events.append(("point", stage.name, name))

    def after_run(self, stage, result):
        self.events.append(("after_run", stage.name, result.status, result.seconds > 0))  # timed by Measure

    def on_cached(self, stage, result):
        self.events.append(("cached", stage.name))


def test_a_recorder_sees_each_stage_in_order(store):
    from pipeline.api import build, compose

    cfg = compose(["model=tiny_llama", f"store.root={store}", "pipeline.force=[compile]"])
    recorder = Recorder()
    result = build(cfg, echo=lambda line: None, instruments=[recorder])
    assert result.ok and result.stage("compile").status == "ran"
    compile_events = [e for e in recorder.events if e[1] == "compile"]
    assert compile_events == [
        ("before_run", "compile", "forced by pipeline.force"), ("point", "compile", "before_run"),
        ("enter", "compile"), ("exit", "compile"), ("point", "compile", "after_run"),
        ("point", "compile", "after_blobs"), ("point", "compile", "after_tree"), ("after_run", "compile", "ran", True)]
    assert ("cached", "export") in recorder.events and ("cached", "validate") in recorder.events
