"""``python -m pipeline.evaluate [build overrides] [--compare "<overrides A>" "<overrides B>"]``: perplexity, side by side.

Builds (or reuses) what the build's config makes up to the package, then the ``evaluate``
stage (passes/evaluate.py): the perplexity of the package where it runs here, of its numerics
twin where its target is lossy, and of the fp32 PyTorch reference, teacher-forced over
``validate.eval_tokens`` of ``validate.eval_text``, with tokens/s. ``--compare`` takes two
override sets (each one argument, overrides separated by spaces) applied on top of the
common ones, e.g. ``--compare hw.mxfp6_matmul=true hw.mxfp6_matmul=false``, and prints them
in two columns. Writes evaluation.json under ``<store.root>/runs/evaluate-<run id>/``.
Exit codes as ``python -m pipeline``: 0, 1 a stage failed, 2 bad input.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from pipeline.pass_api import UserError

def split_compare(argv: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """(the common overrides, one override list per column)."""
    argv = list(argv)
    if "--compare" not in argv:
        return argv, [[]]
    i = argv.index("--compare")
    sides = argv[i + 1:i + 3]
    if len(sides) != 2 or any(s.startswith("--") for s in sides):
        raise UserError(f"--compare: {sides!r} is not allowed; allowed: two override sets, e.g. "
                        "--compare hw.mxfp6_matmul=true hw.mxfp6_matmul=false")
    return argv[:i] + argv[i + 3:], [shlex.split(s) for s in sides]


def evaluate(overrides: Sequence[str], echo: Any = None) -> dict[str, Any]:
    """Build up to the evaluate stage for one override set; its evaluation (UserError on bad input)."""
    from pipeline.api import build, compose

    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    cfg = compose([*overrides, "pipeline.evaluate=true"])
    result = build(cfg, echo=echo, goals=("evaluation",))
    if not result.ok:
        failed = next(s for s in result.stages if s.status == "failed")
        raise RuntimeError(f"{failed.name}: {failed.error}")
    return {"store": str(result.store_root), **result.evaluations["model"]}


def table(columns: dict[str, dict[str, Any]]) -> str:
    """The evaluations as rows (reference, then each run by its label), a column per override set."""
    labels = list(dict.fromkeys(label for ev in columns.values() for label in ev["runs"]))
    rows = [("reference (PyTorch fp32)", lambda ev: _cell(ev["reference"]["ppl"], None, ev["reference"]["tokens_per_second"]))]
    rows += [(label, lambda ev, label=label: _run_cell(ev, label)) for label in labels]
    width = max(len(r[0]) for r in rows) + 2
    head = " " * width + "".join(f"{name or 'perplexity':<50}" for name in columns)
    lines = [head.rstrip()]
    for name, cell in rows:
        lines.append((f"{name:<{width}}" + "".join(f"{cell(ev):<50}" for ev in columns.values())).rstrip())
    first = next(iter(columns.values()))
    lines.append(f"(teacher-forced over {first['reference']['positions']} positions of {first['eval_tokens']} tokens of "
                 f"{first['eval_text']}; ratio = package / reference; KL = mean KL(reference || package))")
    not_run = {ev.get("package_not_run") for ev in columns.values()} - {None}
    lines += [f"package: not run here ({reason})" for reason in sorted(not_run)]
    return "\n".join(lines)


def _run_cell(ev: dict[str, Any], label: str) -> str:
    run = ev["runs"].get(label)
    if run is None:
        return "-"
    return _cell(run["ppl"], run, run["tokens_per_second"])


def _cell(ppl: float, run: dict[str, Any] | None, tps: float) -> str:
    if run is None:
        return f"ppl {ppl:.4f}, {tps:.0f} tok/s"
    return f"ppl {ppl:.4f} x{run['ppl_ratio']:.4f} KL {run['mean_kl']:.1e}, {tps:.0f} tok/s"


def main(argv: Sequence[str]) -> int:
    from pipeline.config import _RUN_ID
    from pipeline.precheck import precheck_overrides

    try:
        common, sides = split_compare(argv)
        for side in sides:
            problem = precheck_overrides([*common, *side])
            if problem:
                raise UserError(problem)
        columns = {" ".join(side): evaluate([*common, *side]) for side in sides}
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(table(columns), flush=True)
    run_dir = Path(next(iter(columns.values()))["store"]) / "runs" / f"evaluate-{_RUN_ID}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "evaluation.json").write_text(json.dumps(columns, indent=1) + "\n")
    print(f"evaluation: {run_dir / 'evaluation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
