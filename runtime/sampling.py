"""Choosing the next token on the host: greedy, or seeded sampling (temperature, top-k, top-p, repetition penalty).

Each sequence has its own random generator, seeded from (seed, the sequence's index), so a
sequence samples the same tokens whether it runs alone, in a batch or through continuous
batching, and in whatever order the scheduler takes it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-6, 1e6


class SamplingError(ValueError):
    """A sampling value out of range: ``key`` names it (``sampling.<key>`` in config, ``<key>`` in a request)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"sampling.{key}: {problem}")
        self.key, self.problem = key, problem


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0: greedy. top_k 0 and top_p 1: no truncation. repetition_penalty 1: none (HF's rule)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    def check(self) -> None:
        """SamplingError (a ValueError), one line naming the sampling key, on a value out of range."""
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (t == 0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):
            # logits divided by a denormal temperature overflow to inf - inf = NaN probabilities
            raise SamplingError("temperature", f"{t!r} is not allowed; allowed: 0 (greedy) or a number from "
                                f"{MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}")
        if isinstance(self.top_k, bool) or not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise SamplingError("top_k", f"{self.top_k!r} is not allowed; allowed: an integer >= 0 (0: off)")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise SamplingError("top_p", f"{self.top_p!r} is not allowed; allowed: 0 < top_p <= 1 (1: off)")
        r = self.repetition_penalty
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < math.inf:
            raise SamplingError("repetition_penalty", f"{r!r} is not allowed; allowed: a finite number > 0 (1: off)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 63:
            raise SamplingError("seed", f"{self.seed!r} is not allowed; allowed: an integer from 0 to 2**63 - 1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Sampler:
    """The next token of one sequence from its logits row."""

    def __init__(self, params: SamplingParams, index: int):
        self.params = params
        self.rng = np.random.default_rng([params.seed, index])

    def __call__(self, logits: np.ndarray, seen: Iterable[int]) -> int:
        p = self.params
        if p.greedy and p.repetition_penalty == 1.0:
            return int(logits.argmax())
        scores = logits.astype(np.float64, copy=True)
        if p.repetition_penalty != 1.0:
            ids = np.fromiter(set(seen), dtype=np.int64)
            if ids.size:
                picked = scores[ids]
                scores[ids] = np.where(picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty)
        if p.greedy:
            return int(scores.argmax())
        scores /= p.temperature
        if p.top_k and p.top_k < scores.size:
            kth = np.partition(scores, -p.top_k)[-p.top_k]
            scores[scores < kth] = -np.inf
        if p.top_p < 1.0:
            order = np.argsort(-scores, kind="stable")
            probs = _softmax(scores[order])
            # keep the smallest prefix whose mass reaches top_p (the first token always)
            keep = np.cumsum(probs) - probs < p.top_p
            scores[order[~keep]] = -np.inf
        probs = _softmax(scores)
        return int(self.rng.choice(probs.size, p=probs))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()
