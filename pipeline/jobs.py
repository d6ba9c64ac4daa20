"""The folders a run or a sweep leaves: each job's summary.json with its exit code."""
from __future__ import annotations

import json
from pathlib import Path

SUMMARY = "summary.json"


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
