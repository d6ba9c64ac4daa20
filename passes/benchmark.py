"""Pass `benchmark` (off by default, ``pipeline.benchmark=true``): the package's generation metrics on a fixed prompt set.

One warm-up run, then ``benchmark.repeats`` timed runs of every prompt (greedy, through the
same scheduler as ``python -m pipeline.infer``); the medians of each metric are the result, so
sweep points compare. Keyed like any stage: a cached benchmark is not measured again. A
package is measured with its target's own session (on its device); where the device is not
here, the stage records that it was skipped rather than timing the ONNX view on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Mapping

from pipeline.pass_api import REQUIRED, Needs, Output, UserError, cfg_field, config_schema, find_target, hook, register_pass

BENCHMARK = "benchmark.json"


@config_schema("benchmark")
@dataclass
class BenchmarkConfig:
    """benchmark.*: a fixed prompt set, generated after a warm-up run, medians of ``repeats``."""

    prompts: List[str] = field(default_factory=lambda: [  # the fixed prompt set (four short prompts)
        "My name is", "The capital of France is", "Write a haiku about the sea.",
        "Explain in one sentence what a compiler does."])
    generation_len: int = 64  # new tokens per prompt
    repeats: int = 3  # timed runs after a warm-up; medians reported
    chat: bool = False  # apply the model's chat template to each prompt


@dataclass(frozen=True)
class BenchmarkParams:
    prompts: tuple[str, ...] = cfg_field(BenchmarkConfig, "prompts")
    generation_len: int = cfg_field(BenchmarkConfig, "generation_len")
    repeats: int = cfg_field(BenchmarkConfig, "repeats")
    chat: bool = cfg_field(BenchmarkConfig, "chat")
    target: str = cfg_field("hw.target", REQUIRED, kind="target")
    runner: str = ""  # filled by the resolve hook: what runs the package here (the target's runtime, or onnxruntime)


@register_pass("benchmark", params=BenchmarkParams, deps=("onnxruntime", "transformers", "numpy"), materialize=True,
               needs=Needs(modules=("onnxruntime", "transformers")), provides=Output.benchmark)
def benchmark(inputs: Mapping[str, Any], params: BenchmarkParams, out: Path) -> dict[str, Any]:
    import json
    import statistics

    from runtime import package_format as fmt
    from runtime.sessions import open_session
    from runtime.textgen import generate_texts
    from runtime.tokenizer import load_tokenizer

    package = Path(inputs["package"])
    program = fmt.read_program(package)
    target = find_target(program.target)
    if params.runner != target.runtime:
        result = {"target": "skipped", "reason": target.absent_reason()}
        (out / BENCHMARK).write_text(json.dumps(result, indent=1) + "\n")
        return result
    session, tokenizer = open_session(package), load_tokenizer(package)

    def once() -> Any:
        return generate_texts(session, tokenizer, package, list(params.prompts), params.generation_len, params.chat)

    once()  # warm-up: first-run allocations and page faults are not what a sweep compares
    runs = [once() for _ in range(params.repeats)]
    metrics = {k: statistics.median(r.perf_metrics[k] for r in runs) for k in runs[0].perf_metrics}
    result = {"target": target.label, "perf_metrics": metrics,
              "prompts": len(params.prompts), "generation_len": params.generation_len, "repeats": params.repeats,
              "batch_size": runs[0].batch_size, "full_batch_size": runs[0].full_batch_size}
    details = {**result, "runs": [r.perf_metrics for r in runs], "generated_ids": runs[0].generated_ids}
    (out / BENCHMARK).write_text(json.dumps(details, indent=1) + "\n")
    return result


@hook("benchmark", "check")
def check(params: BenchmarkParams, facts: Any = None) -> None:
    if not params.prompts or not all(isinstance(p, str) and p for p in params.prompts):
        raise UserError(f"benchmark.prompts: {list(params.prompts)!r} is not allowed; allowed: a list of non-empty strings")
    if not isinstance(params.generation_len, int) or params.generation_len < 1:
        raise UserError(f"benchmark.generation_len: {params.generation_len!r} is not allowed; allowed: an integer >= 1")
    if not isinstance(params.repeats, int) or params.repeats < 1:
        raise UserError(f"benchmark.repeats: {params.repeats!r} is not allowed; allowed: an integer >= 1")


@hook("benchmark", "resolve")
def resolve(params: BenchmarkParams) -> BenchmarkParams:
    """What will run the package here: its target's runtime, or ONNX Runtime (cheap: nothing is imported)."""
    import dataclasses

    return dataclasses.replace(params, runner=find_target(params.target).runner())
