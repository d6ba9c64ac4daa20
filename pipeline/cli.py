"""What every command-line entry point does around its Hydra main: check, launch, exit with the status."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable


def launch(main: Callable[[], object], config_name: str) -> None:
    """Bad overrides (every sweep point) stop here in one line with exit 2; then Hydra runs the
    job(s), and the process exits with the worst job's code (pipeline.callbacks.ExitStatus)."""
    from pipeline.callbacks import exit_code
    from pipeline.overrides import rewrite_argv
    from pipeline.precheck import precheck_overrides

    problem = precheck_overrides(sys.argv[1:], config_name=config_name)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = rewrite_argv(sys.argv[1:])
    main()
    sys.exit(exit_code())


def job_dir(cfg: Any) -> Path:
    """Inside a Hydra main: quiet libraries, dict overrides applied to ``cfg``; the job's run directory."""
    import logging

    from hydra.core.hydra_config import HydraConfig

    from pipeline.overrides import replace_dicts

    logging.getLogger().setLevel(logging.WARNING)  # libraries stay quiet; stages print progress
    logging.getLogger("hydra").setLevel(logging.INFO)
    hydra_cfg = HydraConfig.get()
    replace_dicts(cfg, hydra_cfg.overrides.task)
    return Path(hydra_cfg.runtime.output_dir)


def finish_job(run_dir: Path, code: int, summary: dict[str, Any], message: str | None) -> dict[str, Any]:
    """The error line (if any) on stderr, summary.json with the exit code; the summary (the job's return value)."""
    if message:
        print(f"error: {message}", file=sys.stderr, flush=True)
    summary = {**summary, "exit_code": code}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
