"""The teacher-forced quality gate: a lossy program against the fp32 reference, position by position.

The evaluation text's first ``tokens`` ids are cut into segments that fit the program's
context (``ctx_len - 1`` tokens each; the KV cache starts empty per segment). Each segment
is fed as a user's long prompt and its continuation would be: its first half in chunks of
the prefill length with the KV cache carried (the last position of each chunk is scored: a
prefill returns that one), the rest one token at a time through the decode graph (every
position scored). The reference (PyTorch, fp32) scores the same positions on the same ids.

Per scored position both next-token distributions give: the log-probability of the true
next token (perplexity over all positions; the gate bounds the ratio package / reference),
whether their argmax agree (top-1 agreement), and the KL divergence reference || package
(mean and max). Free-running greedy tokens are no gate for lossy numerics: after a near-tie
two paths part for good though the model is as good as before; teacher forcing keeps both
on the reference's text.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

# Defaults per numerics: the reference library's perplexity targets (AI100.md), fp16 and MX formats
# (int8 weights take the MX one: SmolLM2 int8 RTN, tied table included, gives 1.0073 with int8 activations);
# int4 weights: round-to-nearest int4 in symmetric blocks of 32 (the tied table too) gives 1.379 on SmolLM2
# (4,096 tokens of the default text; mean KL 0.355), with a margin (its KL bound, ln 1.45, too). HQQ gives
# 1.105 (KL 0.089) but runs 20x slower (float zero points): set validate.max_ppl_ratio for it.
FP16_PPL_RATIO, MX_PPL_RATIO, INT4_PPL_RATIO = 1.001, 1.01, 1.45
METRIC_KEYS = {"max_ppl_ratio": "ppl_ratio", "min_top1_agreement": "top1_agreement", "max_mean_kl": "mean_kl"}


def default_ppl_ratio(numerics: Any) -> float:
    """The perplexity ratio a program of these numerics may reach by default."""
    if numerics.matmul_weights == "int4":
        return INT4_PPL_RATIO
    return MX_PPL_RATIO if numerics.mx or numerics.matmul_weights == "int8" else FP16_PPL_RATIO


def bounds(default_ratio: float, max_ppl_ratio: float | None = None, min_top1_agreement: float | None = None,
           max_mean_kl: float | None = None) -> dict[str, float | None]:
    """The gate's bounds: those given, else the numerics' defaults. The perplexity ratio is one-sided
    (a broken program can be luckier on one text); the mean KL bound, two-sided in effect, defaults to
    ln(max_ppl_ratio): the same budget in nats. Top-1 agreement is gated only when given: on
    near-uniform distributions (random weights) near-ties flip argmaxes without any loss."""
    ratio = max_ppl_ratio if max_ppl_ratio is not None else default_ratio
    return {"max_ppl_ratio": ratio, "min_top1_agreement": min_top1_agreement,
            "max_mean_kl": max_mean_kl if max_mean_kl is not None else math.log(ratio)}


def segments(ids: Sequence[int], tokens: int, length: int) -> list[list[int]]:
    """The first ``tokens`` ids in segments of ``length`` (a last one shorter than 2 is dropped)."""
    ids = list(ids)[:tokens]
    parts = [ids[i:i + length] for i in range(0, len(ids), length)]
    return [p for p in parts if len(p) >= 2]


def prefill_length(length: int, chunk: int) -> int:
    """How many of a segment's ``length`` tokens are fed as prompt (in chunks of ``chunk``): about half."""
    return min(max(chunk, (length // 2) // chunk * chunk), length - 1)


def scored_positions(length: int, chunk: int) -> np.ndarray:
    """The positions ``package_logits`` scores on a segment of ``length`` tokens: each prefill chunk's
    last, then every decode step's (a full-sequence model scored at these is scored as the package is)."""
    half = prefill_length(length, chunk)
    return np.asarray([min(first + chunk, half) - 1 for first in range(0, half, chunk)] + list(range(half, length - 1)))


def package_logits(session: Any, segment: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(positions, logits [n, vocab]) of the package on one segment: chunked prefill of its first
    half, then decode steps; position p's logits predict token p + 1."""
    from runtime import package_format as fmt
    from runtime.generate import step

    program = session.program
    prefill, decode = program.spec(fmt.PREFILL), program.decode_spec(1)
    chunk = prefill.seq_len
    half = prefill_length(len(segment), chunk)
    kv = session.new_kv()
    positions, rows = [], []
    for first in range(0, half, chunk):
        part = segment[first:min(first + chunk, half)]
        ids = np.asarray([part], dtype=np.int64)
        pos = np.arange(first, first + len(part), dtype=np.int64)[None, :]
        rows.append(np.array(step(session, prefill, ids, pos, kv)[0, -1]))  # a copy: a session may reuse its buffers
        positions.append(first + len(part) - 1)
    for p in range(half, len(segment) - 1):
        rows.append(np.array(step(session, decode, np.asarray([[segment[p]]], dtype=np.int64),
                                  np.asarray([[p]], dtype=np.int64), kv)[0, -1]))
        positions.append(p)
    return np.asarray(positions), np.stack(rows).astype(np.float32)


def reference_logits(model: Any, segment: Sequence[int], chunk: int = 256) -> np.ndarray:
    """The PyTorch model's logits [len(segment), vocab] at every position of one segment (fed in
    chunks with its cache)."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    rows = []
    with torch.inference_mode():
        for first in range(0, len(segment), chunk):
            ids = torch.tensor([list(segment[first:first + chunk])])
            rows.append(model(input_ids=ids, past_key_values=cache, use_cache=True).logits[0].float().numpy())
    return np.concatenate(rows).astype(np.float32, copy=False)


@dataclass
class Tally:
    """Running sums over scored positions; ``result()`` gives the metrics."""

    positions: int = 0
    nonfinite: int = 0
    first_nonfinite: int | None = None
    nll_reference: float = 0.0
    nll_package: float = 0.0
    agree: int = 0
    kl_sum: float = 0.0
    kl_max: float = 0.0
    seconds: float = 0.0
    tokens: int = 0

    def add(self, reference: np.ndarray, package: np.ndarray, targets: np.ndarray) -> None:
        import torch

        finite = np.isfinite(package).all(axis=-1)
        if not finite.all() and self.first_nonfinite is None:
            self.first_nonfinite = self.positions + int(np.argmin(finite))
        self.nonfinite += int((~finite).sum())
        # float64 log-softmax (torch: ten times numpy's speed over a 50k vocabulary)
        ref = torch.log_softmax(torch.from_numpy(reference).double(), dim=-1)
        pkg = torch.log_softmax(torch.from_numpy(np.where(np.isfinite(package), package, 0.0)).double(), dim=-1)
        ok, rows, tgt = torch.from_numpy(finite), torch.arange(len(targets)), torch.from_numpy(np.asarray(targets))
        self.nll_reference -= float(ref[rows, tgt].sum())
        self.nll_package -= float(torch.where(ok, pkg[rows, tgt], -torch.inf).sum())
        self.agree += int(((reference.argmax(-1) == package.argmax(-1)) & finite).sum())
        kl = torch.where(ok, (ref.exp() * (ref - pkg)).sum(dim=-1), torch.inf)
        self.kl_sum += float(kl.sum())
        self.kl_max = max(self.kl_max, float(kl.max()))
        self.positions += len(targets)

    def result(self) -> dict[str, Any]:
        n = max(self.positions, 1)
        ppl_ref, ppl_pkg = math.exp(self.nll_reference / n), _exp(self.nll_package / n)
        return {"positions": self.positions, "tokens": self.tokens, "ppl_reference": ppl_ref, "ppl_package": ppl_pkg,
                "ppl_ratio": ppl_pkg / ppl_ref, "top1_agreement": self.agree / n, "mean_kl": self.kl_sum / n,
                "max_kl": self.kl_max, "nonfinite_positions": self.nonfinite, "first_nonfinite": self.first_nonfinite,
                "package_tokens_per_second": self.tokens / self.seconds if self.seconds > 0 else 0.0}


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def evaluate(session: Any, model: Any, ids: Sequence[int], tokens: int, progress: Any = None) -> dict[str, Any]:
    """The metrics of ``session`` against ``model`` on the first ``tokens`` of ``ids``."""
    return evaluate_many({"package": session}, model, ids, tokens, progress)["package"]


def evaluate_many(sessions: dict[str, Any], model: Any, ids: Sequence[int], tokens: int,
                  progress: Any = None) -> dict[str, dict[str, Any]]:
    """The metrics of each session (of the same context length) against ``model``, the reference
    run once per segment; also ``reference_seconds`` (its time) in each."""
    lengths = {s.program.ctx_len for s in sessions.values()}
    if len(lengths) != 1:
        raise ValueError(f"evaluate: sessions of different context lengths {sorted(lengths)}")
    length = lengths.pop() - 1
    tallies = {name: Tally() for name in sessions}
    parts = segments(ids, tokens, length)
    reference_seconds = 0.0
    for segment in parts:
        start = time.perf_counter()
        reference = reference_logits(model, segment)
        reference_seconds += time.perf_counter() - start
        for name, session in sessions.items():
            start = time.perf_counter()
            positions, logits = package_logits(session, segment)
            tally = tallies[name]
            tally.seconds += time.perf_counter() - start
            tally.tokens += len(segment) - 1
            tally.add(reference[positions], logits, np.asarray(segment)[positions + 1])
        if progress is not None:
            progress(len(segment))
    fed = sum(len(p) - 1 for p in parts)
    return {name: {**t.result(), "segments": len(parts), "segment_tokens": length,
                   "reference_tokens_per_second": fed / reference_seconds if reference_seconds > 0 else 0.0}
            for name, t in tallies.items()}


def judge(metrics: dict[str, Any], bounds: dict[str, float | None], label: str) -> str | None:
    """The gate's verdict: None when every bound holds, else one line naming the metric, its value and bound."""
    where = f"{label} over {metrics['positions']} teacher-forced positions"
    if metrics["nonfinite_positions"]:
        return (f"validate: the {label} logits are not finite at {metrics['nonfinite_positions']} of "
                f"{metrics['positions']} teacher-forced positions (first: {metrics['first_nonfinite']}); an fp16 "
                "overflow: keep its nodes in fp32 (hw.fp32_nodes) or clip constants (fp16_clip)")
    for key, bound in bounds.items():
        if bound is None:
            continue
        value = metrics[METRIC_KEYS[key]]
        broken = value < bound if key.startswith("min_") else value > bound
        if broken or value != value:
            return f"validate: {METRIC_KEYS[key]} {value:.6g} breaks validate.{key} {bound:g} ({where})"
    return None
