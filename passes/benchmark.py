"""Pass `benchmark` (off by default, ``pipeline.benchmark=true``): the package's generation metrics on a fixed prompt set.

One warm-up run, then ``benchmark.repeats`` timed runs of every prompt (greedy, through the
same scheduler as ``python -m pipeline.infer``); the medians of each metric are the result, so
sweep points compare. Keyed like any stage: a cached benchmark is not measured again. An
AI 100 package is measured on the device (qaicrt); where there is none, the stage records
that it was skipped rather than timing the ONNX view on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.pass_api import Needs, Output, UserError, cfg_field, hook, register_pass

BENCHMARK = "benchmark.json"
DEFAULT_PROMPTS = ("My name is", "The capital of France is", "Write a haiku about the sea.",
                   "Explain in one sentence what a compiler does.")


@dataclass(frozen=True)
class BenchmarkParams:
    prompts: tuple[str, ...] = cfg_field("benchmark.prompts", DEFAULT_PROMPTS)
    generation_len: int = cfg_field("benchmark.generation_len", 64)
    repeats: int = cfg_field("benchmark.repeats", 3)
    chat: bool = cfg_field("benchmark.chat", False)
    runner: str = ""  # filled by the resolve hook: "qaicrt" where the AI 100 runtime is importable


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
    if program.backend == fmt.QAIC and params.runner != "qaicrt":
        result = {"target": "skipped", "reason": "no Cloud AI 100 runtime (qaicrt) on this machine"}
        (out / BENCHMARK).write_text(json.dumps(result, indent=1) + "\n")
        return result
    device = "ai100" if program.backend == fmt.QAIC else "cpu"
    session, tokenizer = open_session(package, device), load_tokenizer(package)

    def once() -> Any:
        return generate_texts(session, tokenizer, package, list(params.prompts), params.generation_len, params.chat)

    once()  # warm-up: first-run allocations and page faults are not what a sweep compares
    runs = [once() for _ in range(params.repeats)]
    metrics = {k: statistics.median(r.perf_metrics[k] for r in runs) for k in runs[0].perf_metrics}
    result = {"target": "qpc" if device == "ai100" else "package", "perf_metrics": metrics,
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
    """Which runtime will run an AI 100 package here (cheap: nothing is imported)."""
    import dataclasses

    from passes.targets.ai100.sdk import qaicrt_present

    return dataclasses.replace(params, runner="qaicrt" if qaicrt_present() else "onnxruntime")
