"""Serving many prompts with one package: static batches, or continuous batching over KV slots.

Written against the Session protocol and the package's roles. A package compiled with
``full_batch_size`` (KV rows = full_batch_size) runs continuous batching: each prompt is prefilled alone into a free KV row (its *slot*), every decode step
advances all occupied slots at once, and a slot whose sequence finished takes the next prompt
before the next step. Any other package runs the prompts in successive batches of its batch
size, right-padded (padding has position -1 and writes nothing).

A sequence stops at an end-of-sequence token, at its ``max_new_tokens``, or when the next
token's KV would not fit the context (``ctx_len``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from runtime import package_format as fmt
from runtime.generate import PAD_POSITION, run_step, step
from runtime.sampling import Sampler, SamplingParams
from runtime.session import Session

OnToken = Callable[[int, int], None]  # (request index, token id), as each token is chosen


@dataclass
class Request:
    index: int                 # the prompt's place in the input (results come back in this order)
    prompt_ids: list[int]
    max_new_tokens: int
    adapter: int = 0           # its LoRA slot (runtime.adapters; 0: none), in a package with adapters


def adapter_slots(rows: Sequence[Request | None]) -> list[int]:
    """Each row's LoRA slot (0 for an empty row)."""
    return [r.adapter if r is not None else 0 for r in rows]


@dataclass
class Generated:
    """What a request produced: its new token ids and why it stopped (``stop``: EOS; ``length``)."""

    index: int
    prompt_len: int
    ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class Run:
    """All requests' results (in request order) and the run's clock."""

    results: list[Generated]
    started: float        # first prefill call
    first_token: float    # first token of any sequence
    ended: float          # last token
    extra_metrics: dict[str, float] = field(default_factory=dict)  # e.g. speculative decoding's

    def perf_metrics(self) -> dict[str, float]:
        """TTFT, decode time and throughputs (the reference library's definitions, see exec_info)."""
        prefill = self.first_token - self.started
        decode = self.ended - self.first_token
        e2e = self.ended - self.started
        decoded = sum(max(len(r.ids) - 1, 0) for r in self.results)
        total = sum(len(r.ids) for r in self.results)
        return {
            "prefill_time_s": prefill,
            "decode_time_s": decode,
            "decode_throughput_tok_s": decoded / decode if decode > 0 else 0.0,
            "total_throughput_tok_s": total / e2e if e2e > 0 else 0.0,
            "e2e_time_s": e2e,
            "decoded_tokens": float(decoded),
            "generated_tokens": float(total),
            **self.extra_metrics,
        }


class Scheduler:
    """Runs requests on a session: ``run(requests)`` -> Run."""

    def __init__(self, session: Session, eos_ids: Sequence[int] = (), sampling: SamplingParams = SamplingParams(),
                 on_token: OnToken | None = None):
        self.session = session
        self.program = session.program
        self.eos = frozenset(int(t) for t in eos_ids)
        self.sampling = sampling
        self.on_token = on_token
        self.prefill = self.program.spec(fmt.PREFILL)
        self._clock: dict[str, float | None] = {"started": None, "first": None}
        self.decode = self.program.decode_spec(1)
        if self.prefill is None:
            raise ValueError(f"the package has no prefill specialization ({[s.name for s in self.program.specializations]})")
        self.continuous = "full_batch_size" in self.prefill.symbols
        self.ctx_len = self.program.ctx_len
        # A padded write goes to the row's last slot (the static-KV transform's scatter), so a
        # decode that pads its own row (a speculative-only package) keeps its real writes off that
        # slot; an in-place cache writes no padding.
        scatter = self.program.signature.kv_update == fmt.KV_SCATTER
        self.write_limit = self.ctx_len - (1 if self.decode.seq_len > 1 and scatter else 0)

    @property
    def batch_size(self) -> int:
        """Sequences decoded together: full_batch_size with continuous batching, else the batch size."""
        return self.decode.batch_size if self.continuous else self.prefill.batch_size

    def check(self, requests: Sequence[Request]) -> None:
        """ValueError, one line, for a prompt that is empty or leaves no room in the context."""
        for r in requests:
            if not r.prompt_ids:
                raise ValueError(f"prompt {r.index}: empty after tokenization; allowed: at least one token")
            if len(r.prompt_ids) > self.ctx_len - 1:
                raise ValueError(f"prompt {r.index}: {len(r.prompt_ids)} tokens is not allowed; allowed: at most "
                                 f"{self.ctx_len - 1} tokens (compile.ctx_len {self.ctx_len} - 1)")
            if r.max_new_tokens < 1:
                raise ValueError(f"generation_len: {r.max_new_tokens} is not allowed; allowed: an integer >= 1")

    def run(self, requests: Sequence[Request]) -> Run:
        self.check(requests)
        results = {r.index: Generated(r.index, len(r.prompt_ids)) for r in requests}
        samplers = {r.index: Sampler(self.sampling, r.index) for r in requests}
        self._clock = {"started": None, "first": None}
        kv = self.session.new_kv()
        if self.continuous:
            self._continuous(list(requests), results, samplers, kv)
        else:
            for first in range(0, len(requests), self.prefill.batch_size):
                self._static_batch(requests[first:first + self.prefill.batch_size], results, samplers, kv)
        ended = time.perf_counter()
        return Run([results[r.index] for r in requests], self._clock["started"] or ended,
                   self._clock["first"] or ended, ended, self.extra_metrics())

    def extra_metrics(self) -> dict[str, float]:
        return {}

    # ---- one token
    def _choose(self, request: Request, logits: np.ndarray, result: Generated, sampler: Sampler) -> None:
        token = sampler(logits, (*request.prompt_ids, *result.ids) if self.sampling.repetition_penalty != 1.0 else ())
        if self._clock["first"] is None:
            self._clock["first"] = time.perf_counter()
        result.ids.append(token)
        if self.on_token:
            self.on_token(request.index, token)
        next_position = len(request.prompt_ids) + len(result.ids) - 1  # where this token's KV would go
        if token in self.eos:
            result.finish_reason = "stop"
        elif len(result.ids) >= request.max_new_tokens or next_position >= self.write_limit:
            result.finish_reason = "length"

    def prefill_rows(self, rows: list[Request | None], kv: dict, batch_index: np.ndarray | None) -> dict[str, np.ndarray]:
        """Prefill chunks over the rows' prompts (right padded); the outputs (logits[, proposals])
        at each row's last prompt token, by role."""
        if self._clock["started"] is None:
            self._clock["started"] = time.perf_counter()
        chunk = self.prefill.seq_len
        lengths = [len(r.prompt_ids) if r else 0 for r in rows]
        last: dict[str, np.ndarray] = {}
        for first in range(0, max(lengths), chunk):
            width = min(chunk, max(lengths) - first) if self.prefill.upper_bound else chunk  # a dynamic graph: no padding
            ids = np.zeros((len(rows), width), dtype=np.int64)
            pos = np.full((len(rows), width), PAD_POSITION, dtype=np.int64)
            for i, r in enumerate(rows):
                part = r.prompt_ids[first:first + chunk] if r else []
                ids[i, :len(part)] = part
                pos[i, :len(part)] = np.arange(first, first + len(part))
            out = run_step(self.session, self.prefill, ids, pos, kv, batch_index, adapter_slots(rows))
            for i, n in enumerate(lengths):
                if n and first <= n - 1 < first + chunk:
                    for role, value in out.items():
                        last.setdefault(role, np.zeros((len(rows), *value.shape[2:]), dtype=value.dtype))[i] = value[i, -1]
        return last

    # ---- static batches
    def _static_batch(self, batch: Sequence[Request], results: dict, samplers: dict, kv: dict) -> None:
        rows: list[Request | None] = [*batch, *[None] * (self.prefill.batch_size - len(batch))]
        logits = self.prefill_rows(rows, kv, None)[fmt.LOGITS]
        for i, r in enumerate(batch):
            self._choose(r, logits[i], results[r.index], samplers[r.index])
        while any(results[r.index].finish_reason is None for r in batch):
            ids = np.zeros((len(rows), 1), dtype=np.int64)
            pos = np.full((len(rows), 1), PAD_POSITION, dtype=np.int64)
            live = [i for i, r in enumerate(batch) if results[r.index].finish_reason is None]
            for i in live:
                r, out = batch[i], results[batch[i].index]
                ids[i, 0], pos[i, 0] = out.ids[-1], len(r.prompt_ids) + len(out.ids) - 1
            logits = step(self.session, self.decode, ids, pos, kv, None, adapter_slots(rows))
            for i in live:
                self._choose(batch[i], logits[i, -1], results[batch[i].index], samplers[batch[i].index])

    # ---- continuous batching
    def _continuous(self, pending: list[Request], results: dict, samplers: dict, kv: dict) -> None:
        slots: list[Request | None] = [None] * self.decode.batch_size
        pending.reverse()  # pop() from the end takes them in order
        while pending or any(slots):
            for s in range(len(slots)):  # a free slot takes the next prompt at once
                while slots[s] is None and pending:
                    r = pending.pop()
                    logits = self.prefill_rows([r], kv, np.array([[s]], dtype=np.int64))[fmt.LOGITS]
                    self._choose(r, logits[0], results[r.index], samplers[r.index])
                    if results[r.index].finish_reason is None:
                        slots[s] = r
            if not any(slots):
                continue
            ids = np.zeros((len(slots), 1), dtype=np.int64)
            pos = np.full((len(slots), 1), PAD_POSITION, dtype=np.int64)
            for s, r in enumerate(slots):
                if r is not None:
                    out = results[r.index]
                    ids[s, 0], pos[s, 0] = out.ids[-1], len(r.prompt_ids) + len(out.ids) - 1
            logits = step(self.session, self.decode, ids, pos, kv, np.arange(len(slots), dtype=np.int64)[:, None],
                          adapter_slots(slots))
            for s, r in enumerate(slots):
                if r is not None:
                    self._choose(r, logits[s, -1], results[r.index], samplers[r.index])
                    if results[r.index].finish_reason is not None:
                        slots[s] = None
