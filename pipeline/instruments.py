"""Instruments: what happens around a pass, kept out of the passes and out of the executor's walk.

In the manner of TVM's PassInstrument: the executor calls every instrument at fixed moments
of a stage's life, and an instrument does its one thing there.

    force(stage)                 a reason to rebuild though the record hits (pipeline.force), or None
    before_run(stage, result)    the stage will run (``result.why`` says why)
    around_run(stage, result)    a context manager around the pass call itself (timing, memory)
    point(stage, name)           a named moment inside a run: before_run, after_run, after_blobs, after_tree
    after_run / on_cached / on_failed(stage, result)

Here: ``Progress`` (the lines a run prints), ``Measure`` (wall time and peak RSS into the
result), ``Faults`` (the test-only kill hook), ``Force`` (pipeline.force).
"""
from __future__ import annotations

import contextlib
import os
import resource
import signal
import threading
import time
from typing import Any, Callable, Iterable, Iterator

_PAGE = os.sysconf("SC_PAGE_SIZE")
FAULT_POINTS = ("before_run", "after_run", "after_blobs", "after_tree")


class Instrument:
    """Every hook does nothing; an instrument overrides the ones it needs."""

    def force(self, stage: Any) -> str | None:
        return None

    def before_run(self, stage: Any, result: Any) -> None:
        pass

    @contextlib.contextmanager
    def around_run(self, stage: Any, result: Any) -> Iterator[None]:
        yield

    def point(self, stage: Any, name: str) -> None:
        pass

    def after_run(self, stage: Any, result: Any) -> None:
        pass

    def on_cached(self, stage: Any, result: Any) -> None:
        pass

    def on_failed(self, stage: Any, result: Any) -> None:
        pass


class Progress(Instrument):
    """One line per stage event: ``<stage>: running (why)``, ``ran (why) [s, RSS]``, ``cached``, ``failed``."""

    def __init__(self, echo: Callable[[str], None] = print):
        self.echo = echo

    def before_run(self, stage: Any, result: Any) -> None:
        self.echo(f"{stage.name}: running ({result.why})")

    def after_run(self, stage: Any, result: Any) -> None:
        rss = f", peak RSS {result.peak_rss / 2**20:.0f} MiB" if result.peak_rss else ""
        self.echo(f"{stage.name}: ran ({result.why}) [{result.seconds:.1f} s{rss}]")

    def on_cached(self, stage: Any, result: Any) -> None:
        self.echo(f"{stage.name}: cached" + (f" ({result.note})" if result.note else ""))

    def on_failed(self, stage: Any, result: Any) -> None:
        self.echo(f"{stage.name}: failed [{result.seconds:.1f} s] {result.error}")


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: the process's peak so far is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Measure(Instrument):
    """Times the pass call and samples RSS every ``interval`` s; sets ``result.seconds`` and ``result.peak_rss``."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval

    @contextlib.contextmanager
    def around_run(self, stage: Any, result: Any) -> Iterator[None]:
        stop = threading.Event()
        peak = [rss_bytes()]

        def sample() -> None:
            while not stop.wait(self.interval):
                peak[0] = max(peak[0], rss_bytes())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        start = time.perf_counter()
        try:
            yield
        finally:
            result.seconds = time.perf_counter() - start
            stop.set()
            thread.join()
            result.peak_rss = max(peak[0], rss_bytes())


class Faults(Instrument):
    """Test-only: ``PIPELINE_FAULT=<stage>:<point>`` SIGKILLs the process at that point of that stage;
    ``PIPELINE_FAULT=<stage>:<point>=fill:<file>`` instead fills the filesystem holding ``<file>``
    (as another writer would), so what the stage writes next meets a full disk.

    Points, in the order a materialized stage passes them: ``before_run``, ``after_run`` (output
    written in tmp/), ``after_blobs`` (files linked into cas/), ``after_tree`` (tree in place,
    before the action record). SIGKILL, as a crash or an OOM kill would be: no cleanup runs.
    """

    def __init__(self, wanted: str | None):
        where, _, action = (wanted or "").partition("=")
        self.wanted, self.action = where or None, action

    @classmethod
    def from_env(cls) -> "Faults":
        return cls(os.environ.get("PIPELINE_FAULT") or None)

    def point(self, stage: Any, name: str) -> None:
        if not self.wanted or self.wanted != f"{stage.name}:{name}":
            return
        if self.action.startswith("fill:"):
            fill_disk(self.action.removeprefix("fill:"))
        else:
            os.kill(os.getpid(), signal.SIGKILL)


def fill_disk(ballast: str) -> None:
    """Append to ``ballast`` until its filesystem has no space left."""
    chunk = b"\0" * (1 << 20)
    with open(ballast, "ab", buffering=0) as f:
        while chunk:
            try:
                while True:
                    f.write(chunk)
            except OSError:
                chunk = chunk[: len(chunk) // 2]


class Force(Instrument):
    """``pipeline.force``: these stages re-run even when their record hits."""

    def __init__(self, stages: Iterable[str]):
        self.stages = frozenset(stages)

    def force(self, stage: Any) -> str | None:
        return "forced by pipeline.force" if stage.name in self.stages else None


def default_instruments(force: Iterable[str], echo: Callable[[str], None] = print) -> list[Instrument]:
    return [Progress(echo), Measure(), Faults.from_env(), Force(force)]
