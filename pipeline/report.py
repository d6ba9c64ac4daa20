"""A sweep's report from its jobs' summaries: ``sweep.csv``, ``sweep.md`` and ``sweep.png`` (a heatmap).

Written once after the last job, in the launching process (pipeline.callbacks.SweepReport),
whatever the launcher; ``python -m pipeline.report <sweep dir> [--metric M] [--x KEY] [--y KEY]``
rebuilds it from what the sweep directory holds (e.g. after an interrupted sweep). One row per
point: its overrides, each stage's status, compile seconds (the compile's own build time, also
when it was cached), package size, validation, the teacher-forced gate's perplexity ratio (lossy
programs: quantized, fp16, MX), and the benchmark's TTFT and decode tok/s when the sweep ran
with ``pipeline.benchmark=true``. The picture shows one metric over two swept
keys, one panel per combination of any further swept keys, failed points marked.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipeline.jobs import SUMMARY, job_code, sweep_job_dirs

FILES = ("sweep.csv", "sweep.md", "sweep.png")
# metric name -> (column heading, unit); the values come from Point.metrics
METRICS = {
    "decode_tok_s": "decode tok/s",
    "ttft_ms": "TTFT ms",
    "compile_s": "compile s",
    "package_mb": "package MB",
    "ppl_ratio": "ppl ratio",
    "run_s": "job s",
}


@dataclass
class Point:
    """One job of a sweep: what it was asked (overrides) and what it reported."""

    job: str
    overrides: dict[str, str]
    exit_code: int
    stages: dict[str, str] = field(default_factory=dict)      # stage -> ran | cached | failed
    validation: str = "-"                                      # passed | failed | -
    metrics: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.exit_code != 0


def read_points(sweep_dir: Path) -> list[Point]:
    return [_point(job) for job in sweep_job_dirs(Path(sweep_dir))]


def _point(job: Path) -> Point:
    overrides = {}
    for item in _overrides(job):
        key, _, value = item.lstrip("+~").partition("=")
        overrides[key] = value
    try:
        summary = json.loads((job / SUMMARY).read_text())
    except (OSError, ValueError):
        return Point(job.name, overrides, 1, error="no summary.json: the job did not finish")
    stages = {s["name"]: s["status"] for s in summary.get("stages", [])}
    compile_stage = next((s for s in summary.get("stages", []) if s["name"] == "compile"), None)
    validation = summary.get("validation")
    perf = ((summary.get("benchmark") or {}).get("perf_metrics")) or {}
    gate = (validation or {}).get("gate") or {}
    size = summary.get("package_bytes")
    metrics = {
        "compile_s": _first(compile_stage, "built_seconds", "seconds") if compile_stage else None,
        "package_mb": size / 1e6 if size else None,
        "ttft_ms": perf["prefill_time_s"] * 1000 if "prefill_time_s" in perf else None,
        "decode_tok_s": perf.get("decode_throughput_tok_s"),
        "run_s": sum(s.get("seconds", 0) for s in summary.get("stages", [])) or None,
        "ppl_ratio": gate.get("ppl_ratio"),  # lossy programs only (lossless ones are checked exactly)
    }
    failed = next((f"{s['name']}: {s.get('error')}" for s in summary.get("stages", []) if s["status"] == "failed"), None)
    return Point(job.name, overrides, job_code(job), stages,
                 "-" if not validation else ("passed" if validation.get("passed") else "failed"),
                 metrics, failed or summary.get("error"))


def _overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    from omegaconf import OmegaConf

    return [str(x) for x in OmegaConf.load(path)]


def _first(d: dict, *keys: str) -> Any:
    return next((d[k] for k in keys if d.get(k) is not None), None)


def swept_keys(points: Sequence[Point]) -> list[str]:
    """The keys whose value differs between points, in the order they were given."""
    keys: list[str] = []
    for p in points:
        keys += [k for k in p.overrides if k not in keys]
    varying = [k for k in keys if len({p.overrides.get(k) for p in points}) > 1]
    return varying or keys


def default_metric(points: Sequence[Point]) -> str:
    return "decode_tok_s" if any(p.metrics.get("decode_tok_s") is not None for p in points) else "compile_s"


def check_choice(metric: str | None, x: str | None, y: str | None, keys: Sequence[str]) -> None:
    """ValueError, one line, for a metric or axis the report cannot draw."""
    if metric is not None and metric not in METRICS:
        raise ValueError(f"sweep.metric: {metric!r} is not allowed; allowed: {' | '.join(METRICS)}")
    for name, axis in (("sweep.x", x), ("sweep.y", y)):
        if axis is not None and axis not in keys:
            raise ValueError(f"{name}: {axis!r} is not allowed; allowed: a swept key ({', '.join(keys) or 'none'})")
    if x is not None and x == y:
        raise ValueError(f"sweep.y: {y!r} is not allowed; allowed: a swept key other than sweep.x")


def write_report(sweep_dir: Path, metric: str | None = None, x: str | None = None, y: str | None = None) -> list[Path]:
    """Write sweep.csv, sweep.md and sweep.png into the sweep directory; their paths."""
    sweep_dir = Path(sweep_dir)
    points = read_points(sweep_dir)
    keys = swept_keys(points)
    check_choice(metric, x, y, keys)
    metric = metric or default_metric(points)
    x = x or next((k for k in keys if k != y), None)
    y = y or next((k for k in keys if k != x), None)
    stages = []
    for p in points:
        stages += [s for s in p.stages if s not in stages]
    columns = ["job", *keys, *(f"{s}" for s in stages), "validation", *METRICS.values(), "exit_code", "error"]
    rows = [[p.job, *(p.overrides.get(k, "") for k in keys), *(p.stages.get(s, "-") for s in stages), p.validation,
             *(_show(p.metrics.get(m), m) for m in METRICS), p.exit_code, p.error or ""] for p in points]
    with open(sweep_dir / "sweep.csv", "w", newline="") as f:
        csv.writer(f).writerows([columns, *rows])
    (sweep_dir / "sweep.md").write_text(_markdown(columns, rows, points, metric))
    _heatmap(sweep_dir / "sweep.png", points, metric, x, y, [k for k in keys if k not in (x, y)])
    return [sweep_dir / f for f in FILES]


def _show(value: float | None, metric: str = "") -> str:
    if value is None:
        return ""
    if metric == "ppl_ratio":
        return f"{value:.4f}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"


def _markdown(columns: list[str], rows: list[list], points: Sequence[Point], metric: str) -> str:
    failed = [p.job for p in points if p.failed]
    lines = [f"# Sweep: {len(points)} points, {len(points) - len(failed)} passed, {len(failed)} failed", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row, p in zip(rows, points):
        cells = [str(c).replace("|", "\\|") for c in row]
        if p.failed:
            cells[0] = f"**{cells[0]} FAILED**"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"sweep.png: {METRICS[metric]} ({metric})"]
    return "\n".join(lines) + "\n"


def _order(values: set[str]) -> list[str]:
    """Natural order: numbers by value, and the numbers inside names too (p32_c256 before p128_c512)."""
    import re

    def key(v: str) -> list:
        return [(0, float(part), "") if part.isdigit() else (1, 0.0, part) for part in re.split(r"(\d+)", v) if part]

    return sorted(values, key=key)


def _heatmap(path: Path, points: Sequence[Point], metric: str, x: str | None, y: str | None, rest: list[str]) -> None:
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its first run's font-cache note
    import matplotlib.pyplot as plt
    import numpy as np

    xs = _order({p.overrides.get(x, "") for p in points}) if x else [""]
    ys = _order({p.overrides.get(y, "") for p in points}) if y else [""]
    facets = sorted({tuple(p.overrides.get(k, "") for k in rest) for p in points})
    values = [p.metrics.get(metric) for p in points if not p.failed and p.metrics.get(metric) is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    fig, axes = plt.subplots(1, len(facets), figsize=(1.6 + 1.5 * len(xs) * len(facets), 1.4 + 0.8 * len(ys)),
                             squeeze=False)
    for ax, facet in zip(axes[0], facets):
        grid = np.full((len(ys), len(xs)), np.nan)
        marks: dict[tuple[int, int], str] = {}
        for p in points:
            if tuple(p.overrides.get(k, "") for k in rest) != facet:
                continue
            i, j = ys.index(p.overrides.get(y, "")) if y else 0, xs.index(p.overrides.get(x, "")) if x else 0
            value = p.metrics.get(metric)
            if p.failed:
                marks[(i, j)] = "failed"
            elif value is not None:
                grid[i, j] = value
                marks[(i, j)] = _show(value)
        image = ax.imshow(grid, cmap="viridis", vmin=low, vmax=high if high > low else low + 1, aspect="auto",
                          origin="lower")
        for (i, j), text in marks.items():
            failed = text == "failed"
            if failed:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx", edgecolor="red"))
            shade = grid[i, j]
            light = not math.isnan(shade) and (shade - low) / ((high - low) or 1) > 0.6
            ax.text(j, i, text, ha="center", va="center", color="red" if failed else ("black" if light else "white"),
                    fontsize=9, fontweight="bold" if failed else "normal")
        ax.set_xticks(range(len(xs)), xs)
        ax.set_yticks(range(len(ys)), ys)
        ax.set_xlabel(x or "")
        ax.set_ylabel(y or "")
        if rest:
            ax.set_title(", ".join(f"{k}={v}" for k, v in zip(rest, facet)), fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), label=METRICS[metric])
    fig.suptitle(f"{METRICS[metric]} over {x or '-'} x {y or '-'} ({len(points)} points)", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _sweep_keys(sweep_dir: Path) -> dict[str, Any]:
    """The sweep.* keys of the sweep's own config (multirun.yaml), if it has them."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    node = OmegaConf.load(path).get("sweep")
    return dict(OmegaConf.to_container(node)) if node is not None else {}


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--metric", choices=list(METRICS))
    ap.add_argument("--x")
    ap.add_argument("--y")
    args = ap.parse_args(argv)
    if not sweep_job_dirs(args.sweep_dir):
        print(f"error: sweep_dir: {str(args.sweep_dir)!r} holds no sweep jobs; allowed: a hydra.sweep.dir "
              "(job folders with .hydra/ or summary.json)", file=sys.stderr)
        return 2
    chosen = _sweep_keys(args.sweep_dir)  # what the sweep itself was given (sweep.*), unless given here
    try:
        paths = write_report(args.sweep_dir, args.metric or chosen.get("metric"), args.x or chosen.get("x"),
                             args.y or chosen.get("y"))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    points = read_points(args.sweep_dir)
    print(f"{len(points)} points, {sum(p.failed for p in points)} failed: " + ", ".join(str(p) for p in paths))
    return 1 if any(p.failed for p in points) else 0


if __name__ == "__main__":
    raise SystemExit(main())
