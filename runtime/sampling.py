"""Choosing the next token on the host: greedy, or seeded sampling (temperature, top-k, top-p, repetition penalty).

Each sequence has its own random generator, seeded from (seed, the sequence's index), so a
sequence samples the same tokens whether it runs alone, in a batch or through continuous
batching, and in whatever order the scheduler takes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0: greedy. top_k 0 and top_p 1: no truncation. repetition_penalty 1: none (HF's rule)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    def check(self) -> None:
        """ValueError, one line naming the sampling key, on a value out of range."""
        if not self.temperature >= 0:
            raise ValueError(f"sampling.temperature: {self.temperature!r} is not allowed; allowed: >= 0 (0: greedy)")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"sampling.top_k: {self.top_k!r} is not allowed; allowed: an integer >= 0 (0: off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p: {self.top_p!r} is not allowed; allowed: 0 < top_p <= 1 (1: off)")
        if not self.repetition_penalty > 0:
            raise ValueError(f"sampling.repetition_penalty: {self.repetition_penalty!r} is not allowed; allowed: > 0 (1: off)")

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
