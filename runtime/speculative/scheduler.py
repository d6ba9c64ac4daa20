"""The speculative decode loop: propose up to K tokens per row, score them in one target step, keep the longest agreeing prefix.

Each target step feeds every live row its newest token and its proposals (positions p..p+m;
rows with fewer proposals are right-padded with position -1, which writes no KV), on the
smallest compiled K that covers the longest proposal. The target's greedy token at each of
those positions is what plain decoding would have produced there, as long as the proposals
before it agreed: a row keeps the agreeing proposals and the target's next token. KV rows the
target wrote for rejected proposals lie beyond the row's position: the next step overwrites
them before any token can attend to them (a query at position q sees slots <= q only).

Static batches and continuous batching as runtime.scheduler.Scheduler, whose prefill and stop
rules are reused; greedy only.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from runtime import package_format as fmt
from runtime.generate import PAD_POSITION, run_step
from runtime.scheduler import adapter_slots
from runtime.sampling import SamplingParams
from runtime.scheduler import Request, Scheduler
from runtime.session import Session
from runtime.speculative.proposers import Proposer


def check_greedy(sampling: SamplingParams, scheme: str) -> None:
    """ValueError, one line, for sampling settings speculative decoding does not keep (it is greedy here)."""
    for key, value, greedy in (("temperature", sampling.temperature, 0.0),
                               ("repetition_penalty", sampling.repetition_penalty, 1.0)):
        if value != greedy:
            raise ValueError(f"sampling.{key}: {value!r} is not allowed with spd={scheme}; allowed: "
                             f"{greedy:g} (speculative decoding here is greedy)")


class SpeculativeScheduler(Scheduler):
    """``Scheduler`` with a proposer; ``accepted[index]``: tokens each target step produced for a request."""

    def __init__(self, session: Session, proposer: Proposer, eos_ids: Sequence[int] = (),
                 sampling: SamplingParams = SamplingParams(), on_token=None, num_speculative_tokens: int | None = None):
        super().__init__(session, eos_ids, sampling, on_token)
        check_greedy(sampling, proposer.name)
        ks = sorted(s.k for s in self.program.specializations if fmt.DECODE_K in s.roles)
        if not ks:
            raise ValueError(f"spd: {proposer.name} is not allowed for this package; allowed: a package built with "
                             "spd.num_speculative_tokens (it has no decode_k specialization)")
        self.k = num_speculative_tokens or max(ks)
        if self.k > max(ks):
            raise ValueError(f"spd.num_speculative_tokens: {self.k} is not allowed for this package; allowed: <= {max(ks)}")
        self.proposer = proposer
        self.accepted: dict[int, list[int]] = {}
        self.iterations = 0
        self.target_seconds = 0.0

    def extra_metrics(self) -> dict[str, float]:
        entries = [n for steps in self.accepted.values() for n in steps]
        return {"mean_num_accepted_tokens": sum(entries) / len(entries) if entries else 0.0,
                "decode_iterations": self.iterations,
                "decode_draft_time_s": self.proposer.seconds,
                "decode_target_time_s": self.target_seconds}

    def run(self, requests: Sequence[Request]):
        self.accepted = {r.index: [] for r in requests}
        return super().run(requests)

    # ---- static batches
    def _static_batch(self, batch, results, samplers, kv):
        rows: list[Request | None] = [*batch, *[None] * (self.prefill.batch_size - len(batch))]
        self._start(rows, list(range(len(batch))), kv, None, results, samplers)
        while any(results[r.index].finish_reason is None for r in batch):
            self._round(rows, kv, None, results, samplers)

    # ---- continuous batching
    def _continuous(self, pending, results, samplers, kv):
        slots: list[Request | None] = [None] * self.decode.batch_size
        pending.reverse()
        every = np.arange(len(slots), dtype=np.int64)[:, None]
        while pending or any(slots):
            for s in range(len(slots)):
                while slots[s] is None and pending:
                    r = pending.pop()
                    self._start([r], [s], kv, np.array([[s]], dtype=np.int64), results, samplers)
                    if results[r.index].finish_reason is None:
                        slots[s] = r
            if any(slots):
                self._round(slots, kv, every, results, samplers)
                slots = [r if r is not None and results[r.index].finish_reason is None else None for r in slots]

    def _start(self, rows: list[Request | None], kv_rows: list[int], kv, batch_index, results, samplers) -> None:
        """Prefill the target (and the proposer) and choose each sequence's first token."""
        live = [r for r in rows if r is not None]
        last = self.prefill_rows(rows, kv, batch_index)
        self.proposer.start(kv_rows, [r.prompt_ids for r in live], batch_index, last, self.decode.batch_size)
        for i, r in enumerate(live):
            self._choose(r, last[fmt.LOGITS][i], results[r.index], samplers[r.index])

    def _round(self, rows: list[Request | None], kv, batch_index, results, samplers) -> None:
        """One target step over every live row."""
        live = [i for i, r in enumerate(rows) if r is not None and results[r.index].finish_reason is None]
        contexts = [[*rows[i].prompt_ids, *results[rows[i].index].ids] for i in live]
        caps = []
        for i, context in zip(live, contexts):
            remaining = rows[i].max_new_tokens - len(results[rows[i].index].ids)
            caps.append(max(0, min(self.k, remaining - 1, self.write_limit - len(context))))
        proposals = self.proposer.propose(live, contexts, caps, len(rows), batch_index is not None)
        width = 1 + max(len(p) for p in proposals)
        spec = self.program.decode_spec(width)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        pos = np.full((len(rows), width), PAD_POSITION, dtype=np.int64)
        for i, context, proposed in zip(live, contexts, proposals):
            n = 1 + len(proposed)
            ids[i, :n] = [context[-1], *proposed]
            pos[i, :n] = np.arange(len(context) - 1, len(context) - 1 + n)
        started = time.perf_counter()
        out = run_step(self.session, spec, ids, pos, kv, batch_index, adapter_slots(rows))
        self.target_seconds += time.perf_counter() - started
        self.iterations += 1
        kept = out[fmt.LOGITS].shape[1]
        for i, proposed in zip(live, proposals):
            r, result = rows[i], results[rows[i].index]
            n = 1 + len(proposed)
            logits = out[fmt.LOGITS][i, kept - n:]  # the row's valid positions (kept ends at its last one)
            chosen = logits.argmax(-1)
            agree = 0
            while agree < len(proposed) and proposed[agree] == chosen[agree]:
                agree += 1
            produced = 0
            for position in range(agree + 1):
                self._choose(r, logits[position], result, samplers[r.index])
                produced += 1
                if result.finish_reason is not None:
                    break
            self.accepted[r.index].append(produced)
            self.proposer.verified(i, agree, out, kept - n + agree)
