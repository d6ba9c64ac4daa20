"""Hydra callbacks: the exit status of a run or a sweep, and a sweep's report, in the launching process.

Each job writes ``summary.json`` (with its ``exit_code``) in its own directory and returns
its summary. Whatever the launcher (basic, joblib, submitit), ``on_run_end`` and
``on_multirun_end`` run in the process that launched the jobs: ``ExitStatus`` reads the
summaries there and keeps the worst code (2 bad input > 1 a stage failed > 0), which
``python -m pipeline`` exits with. A job that left no summary counts as failed. ``SweepReport``
writes the sweep's report (pipeline.report) once the last job is done. ``Redact`` keeps
credentials given on the command line (``*_options`` values, ``user:password@`` in URLs) out
of the files Hydra saves (``.hydra/``, ``multirun.yaml``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from pipeline.jobs import job_code, sweep_job_dirs

_status: dict[str, Any] = {"code": 0, "jobs": 0, "failed": []}


def exit_code() -> int:
    return int(_status["code"])


def reset() -> None:
    _status.update(code=0, jobs=0, failed=[])


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


class SweepReport(Callback):
    """sweep.csv, sweep.md and sweep.png in hydra.sweep.dir after the last job (``sweep.*`` keys)."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        import sys

        from pipeline.report import write_report

        sweep = config.get("sweep") or {}
        try:
            paths = write_report(Path(config.hydra.sweep.dir), sweep.get("metric"), sweep.get("x"), sweep.get("y"))
        except Exception as exc:  # noqa: BLE001 - a report that cannot be drawn must not hide the jobs' results
            print(f"error: sweep report: {type(exc).__name__}: {exc}", file=sys.stderr)
            _status["code"] = max(_status["code"], 1)
            return
        print(f"sweep report: {', '.join(str(p) for p in paths)}", flush=True)


class Redact(Callback):
    """Secrets of the composed config replaced by ``<redacted>`` in the files Hydra saved for the job
    (and, after the sweep, in its multirun.yaml): the string values under any ``*_options`` key, and
    the user:password of ``store.remote`` and ``to`` URLs."""

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        output = config.hydra.get("output_subdir")
        if output:
            redact_files(Path(config.hydra.runtime.output_dir) / output, secrets_of(config))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        redact_files(Path(config.hydra.sweep.dir), secrets_of(config), names=("multirun.yaml",))


def secrets_of(config: Any) -> set[str]:
    from omegaconf import OmegaConf
    from urllib.parse import urlsplit

    found: set[str] = set()

    def walk(node: Any, under_options: bool) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, under_options or str(key).endswith("_options"))
        elif isinstance(node, list):
            for value in node:
                walk(value, under_options)
        elif under_options and isinstance(node, str) and len(node) >= 6:
            found.add(node)

    plain = OmegaConf.to_container(config, resolve=False)
    plain.pop("hydra", None)
    walk(plain, False)
    for url in ((plain.get("store") or {}).get("remote"), plain.get("to")):
        if isinstance(url, str) and "@" in urlsplit(url).netloc:
            found.add(urlsplit(url).netloc.rsplit("@", 1)[0])
    return found


def redact_files(folder: Path, secrets: set[str], names: tuple[str, ...] = ("config.yaml", "hydra.yaml", "overrides.yaml")) -> None:
    if not secrets:
        return
    for name in names:
        path = folder / name
        try:
            text = path.read_text()
        except OSError:
            continue
        redacted = text
        for secret in sorted(secrets, key=len, reverse=True):
            redacted = redacted.replace(secret, "<redacted>")
        if redacted != text:
            path.write_text(redacted)
