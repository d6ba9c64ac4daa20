"""``python -m pipeline [overrides]``: build a model for a target (``-m`` sweeps with Hydra).

Exit codes: 0 success; 1 a stage failed (a validation mismatch included); 2 bad input.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pipeline.config import register
from pipeline.overrides import precheck_overrides, replace_dicts, rewrite_argv
from pipeline.pass_api import UserError

register()
_exit_codes: list[int] = []


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from pipeline.api import build
    from pipeline.graph import build_graph, mermaid
    from pipeline.plan import load_passes

    logging.getLogger().setLevel(logging.WARNING)  # libraries stay quiet; stages print progress
    logging.getLogger("hydra").setLevel(logging.INFO)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    replace_dicts(cfg, hydra_cfg.overrides.task)
    if cfg.pipeline.show_graph:
        try:
            load_passes()
            from omegaconf import OmegaConf

            print(mermaid(build_graph(OmegaConf.to_container(cfg.pipeline.stages, resolve=True))))
        except UserError as exc:
            _fail(run_dir, 2, str(exc))
        return
    summary: dict = {"stages": [], "validation": None, "package": None}
    started = time.perf_counter()
    try:
        result = build(cfg, echo=lambda line: print(line, flush=True), run_dir=run_dir)
    except UserError as exc:
        _fail(run_dir, 2, str(exc), summary)
        return
    summary = result.summary()
    _write_summary(run_dir, summary)
    v = result.validation
    if v:
        verdict = "passed" if v.get("passed") else "FAILED"
        print(f"validation: {verdict} (target {v.get('target')}: {v.get('tokens_compared')} tokens compared, "
              f"max |logit diff| {v.get('max_abs_logit_diff', float('nan')):.2e})")
    if result.package:
        print(f"package: {result.package}")
    counts = {s: sum(1 for x in result.stages if x.status == s) for s in ("ran", "cached", "failed")}
    print(f"summary: {run_dir / 'summary.json'} ({counts['ran']} ran, {counts['cached']} cached, "
          f"{counts['failed']} failed; {time.perf_counter() - started:.1f} s)")
    _exit_codes.append(0 if result.ok else 1)


def _fail(run_dir: Path, code: int, message: str, summary: dict | None = None) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    if summary is not None:
        _write_summary(run_dir, {**summary, "error": message})
    _exit_codes.append(code)


def _write_summary(run_dir: Path, summary: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    problem = precheck_overrides(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = rewrite_argv(sys.argv[1:])
    main()
    sys.exit(max(_exit_codes, default=0))
