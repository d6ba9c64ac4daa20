"""Hydra callbacks: the exit status of a run or a sweep, decided in the launching process.

Each job writes ``summary.json`` (with its ``exit_code``) in its own directory and returns
its summary. Whatever the launcher (basic, joblib, submitit), ``on_run_end`` and
``on_multirun_end`` run in the process that launched the jobs: ``ExitStatus`` reads the
summaries there and keeps the worst code (2 bad input > 1 a stage failed > 0), which
``python -m pipeline`` exits with. A job that left no summary counts as failed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

SUMMARY = "summary.json"
_status: dict[str, Any] = {"code": 0, "jobs": 0, "failed": []}


def exit_code() -> int:
    return int(_status["code"])


def reset() -> None:
    _status.update(code=0, jobs=0, failed=[])


def job_code(job_dir: Path) -> int:
    """A job's exit code from its summary.json; 1 when it has none (it died before writing it)."""
    try:
        return int(json.loads((Path(job_dir) / SUMMARY).read_text()).get("exit_code", 1))
    except (OSError, ValueError):
        return 1


def sweep_job_dirs(sweep_dir: Path) -> list[Path]:
    """The jobs' directories of a sweep: those Hydra made for a job (they hold .hydra/), by job number."""
    dirs = [p.parent for p in Path(sweep_dir).glob("*/.hydra")] + [p.parent for p in Path(sweep_dir).glob(f"*/{SUMMARY}")]
    return sorted(set(dirs), key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


class ExitStatus(Callback):
    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        code = job_code(Path(config.hydra.runtime.output_dir))
        _status.update(code=max(_status["code"], code), jobs=_status["jobs"] + 1)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        for job in sweep_job_dirs(Path(config.hydra.sweep.dir)):
            code = job_code(job)
            _status["jobs"] += 1
            if code:
                _status["failed"].append((job.name, code))
            _status["code"] = max(_status["code"], code)
