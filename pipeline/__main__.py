"""``python -m pipeline [overrides]``: build a model for a target (``-m`` sweeps with Hydra).

Exit codes, for a run and for a sweep (its worst job), under any Hydra launcher: 0 success;
1 a stage failed (a validation mismatch included); 2 bad input.
"""
from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from pipeline.cli import finish_job, job_dir
from pipeline.config import register
from pipeline.pass_api import UserError

register()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any]:
    """One job: build, print, write summary.json (with its exit code) and return the summary."""
    run_dir = job_dir(cfg)
    if cfg.pipeline.show_graph:
        return _show_graph(cfg, run_dir)
    summary: dict[str, Any] = {"stages": [], "validation": None, "package": None}
    started = time.perf_counter()
    try:
        from pipeline.api import build

        result = build(cfg, echo=lambda line: print(line, flush=True), run_dir=run_dir)
    except UserError as exc:
        return _fail(run_dir, 2, str(exc), summary)
    except Exception as exc:  # noqa: BLE001 - a bug or an environment failure outside any stage
        (run_dir / "error.txt").parent.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text("".join(traceback.format_exception(exc)))
        return _fail(run_dir, 1, f"{type(exc).__name__}: {exc} (traceback: {run_dir / 'error.txt'})", summary)
    summary = finish_job(run_dir, 0 if result.ok else 1, result.summary(), None)
    for role, v in result.validations.items():
        verdict = "passed" if v.get("passed") else "FAILED"
        if "min_cosine" in v:  # an embedding package
            print(f"validation{_of(role)}: {verdict} (target {v.get('target')}: {v.get('texts_compared')} texts compared, "
                  f"min cosine similarity {v['min_cosine']:.6f}, compiled lengths used {v.get('lengths_used')})")
            continue
        adapters = "".join(f"; adapter {name}: {'passed' if a['passed'] else 'FAILED'}, {a['tokens_compared']} tokens, "
                           f"max |logit diff| {a['max_abs_logit_diff']:.2e}" for name, a in v.get("adapters", {}).items())
        exact = v.get("exact_target", v.get("target"))
        verdict = "passed" if v.get("exact_passed", v.get("passed")) else "FAILED"
        if v.get("max_abs_logit_diff") is not None:
            print(f"validation{_of(role)}: {verdict} (target {exact}: {v.get('tokens_compared')} tokens compared, "
                  f"max |logit diff| {v['max_abs_logit_diff']:.2e}{adapters})")
        if (g := v.get("gate")) is not None:
            bound = g["bounds"]["max_ppl_ratio"]
            print(f"validation{_of(role)}: {'passed' if g.get('passed') else 'FAILED'} (target {v.get('target')}: "
                  f"{g['positions']} teacher-forced positions, perplexity ratio {g['ppl_ratio']:.4f} (bound {bound:g}), "
                  f"mean KL {g['mean_kl']:.2e}, top-1 agreement {g['top1_agreement']:.3f}, "
                  f"greedy tokens matching {g['matching_prefix_tokens']})")
    for role, path in result.packages.items():
        print(f"package{_of(role)}: {path}")
    counts = {s: sum(1 for x in result.stages if x.status == s) for s in ("ran", "cached", "failed")}
    print(f"summary: {run_dir / 'summary.json'} ({counts['ran']} ran, {counts['cached']} cached, "
          f"{counts['failed']} failed; {time.perf_counter() - started:.1f} s)")
    return summary


def _of(role: str) -> str:
    return "" if role == "model" else f" ({role})"


def _show_graph(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from pipeline.graph import build_graph, mermaid

    try:
        print(mermaid(build_graph(OmegaConf.to_container(cfg.pipeline.stages, resolve=True))))
    except UserError as exc:
        return _fail(run_dir, 2, str(exc), {})
    return finish_job(run_dir, 0, {"graph": True}, None)


def _fail(run_dir: Path, code: int, message: str, summary: dict[str, Any]) -> dict[str, Any]:
    return finish_job(run_dir, code, {**summary, "error": message}, message)


if __name__ == "__main__":
    from pipeline.cli import launch

    launch(main, "config")
