"""Where proposed tokens come from: a draft model, prompt lookup (n-grams), or the target's own projection heads.

A proposer answers, for each live row of a step, up to ``cap`` tokens that may follow the row's
context; the target then scores them all in one step (runtime.speculative.scheduler). Rows are
KV rows: a static batch's row, or a continuous-batching slot.
"""
from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np

from runtime import package_format as fmt
from runtime.generate import PAD_POSITION, step
from runtime.session import Session


class Proposer:
    """The interface; ``seconds``: time spent proposing (decode_draft_time_s)."""

    name = "none"
    draft_model_name: str | None = None

    def __init__(self) -> None:
        self.seconds = 0.0

    def start(self, rows: Sequence[int], prompts: Sequence[Sequence[int]], batch_index: np.ndarray | None,
              last: Mapping[str, np.ndarray], rows_total: int) -> None:
        """New sequences in ``rows`` (their prompts); ``last``: the target's prefill outputs at
        each one's last prompt token (by role, in the order of ``rows``)."""

    def propose(self, rows: Sequence[int], contexts: Sequence[Sequence[int]], caps: Sequence[int],
                rows_total: int, continuous: bool) -> list[list[int]]:
        raise NotImplementedError

    def verified(self, row: int, accepted: int, outputs: Mapping[str, np.ndarray], position: int) -> None:
        """Row ``row`` accepted ``accepted`` proposals; ``outputs[role][row, position]`` are the
        target's outputs at the position that chose the row's newest token."""


class PromptLookup(Proposer):
    """Prompt lookup decoding: the tokens that followed the latest earlier occurrence of the
    context's last n tokens (n from ``max_ngram_size`` down to 1) in the prompt and the text so
    far; an occurrence with a full continuation is preferred, else the earliest (the longest)."""

    name = "pld"

    def __init__(self, max_ngram_size: int = 3):
        super().__init__()
        if max_ngram_size < 1:
            raise ValueError(f"spd.max_ngram_size: {max_ngram_size!r} is not allowed; allowed: an integer >= 1")
        self.max_ngram_size = max_ngram_size

    def propose(self, rows, contexts, caps, rows_total, continuous):
        started = time.perf_counter()
        out = [lookup(c, self.max_ngram_size, k) if k > 0 else [] for c, k in zip(contexts, caps)]
        self.seconds += time.perf_counter() - started
        return out


def lookup(context: Sequence[int], max_ngram_size: int, k: int) -> list[int]:
    """Up to k tokens continuing an earlier occurrence of the context's last n-gram (longest n first)."""
    tokens = np.asarray(context, dtype=np.int64)
    for n in range(min(max_ngram_size, len(tokens) - 1), 0, -1):
        windows = np.lib.stride_tricks.sliding_window_view(tokens[:-1], n)  # each has a token after it
        hits = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
        if len(hits):
            full = hits[hits + n + k <= len(tokens)]
            start = (full[-1] if len(full) else hits[0]) + n
            return tokens[start:start + k].tolist()
    return []


class Projections(Proposer):
    """Multi-projection heads: the target's ``proposals`` output at the position that chose a
    row's newest token are the next tokens it proposes (no draft time)."""

    name = "multiproj"

    def __init__(self, signature: fmt.Signature):
        super().__init__()
        if signature.output(fmt.PROPOSALS) is None:
            raise ValueError("spd: multiproj is not allowed for this package; allowed: a package built with "
                             "spd=multiproj (its graph has a proposals output)")
        self.pending: dict[int, list[int]] = {}

    def start(self, rows, prompts, batch_index, last, rows_total):
        for i, row in enumerate(rows):
            self.pending[row] = last[fmt.PROPOSALS][i].tolist()

    def propose(self, rows, contexts, caps, rows_total, continuous):
        return [self.pending[row][:k] for row, k in zip(rows, caps)]

    def verified(self, row, accepted, outputs, position):
        self.pending[row] = outputs[fmt.PROPOSALS][row, position].tolist()


class DraftModel(Proposer):
    """A draft package proposing K tokens greedily, K decode steps of its own per target step.

    Its KV rows mirror the target's. ``seen[row]``: how many of the row's context tokens its KV
    holds; a step first feeds what it has not seen but the last token (after a full acceptance:
    the last proposal), then the last token and its own proposals.
    """

    name = "draft"

    def __init__(self, session: Session, name: str | None = None):
        super().__init__()
        self.session, self.program = session, session.program
        self.draft_model_name = name
        self.prefill = self.program.spec(fmt.PREFILL)
        self.decode = self.program.decode_spec(1)
        self.kv = session.new_kv()
        self.seen: dict[int, int] = {}  # per row: context tokens its KV holds
        self.fed: dict[int, int] = {}   # per row: tokens fed in the last propose (the last token + proposals but one)

    def check(self, target: fmt.Program) -> None:
        """The draft must share the target's vocabulary, KV rows and context."""
        for what, mine, theirs in (("vocab_size", self.program.signature.dims["vocab_size"], target.signature.dims["vocab_size"]),
                                   ("KV rows", self.program.kv_batch_size, target.kv_batch_size),
                                   ("ctx_len", self.program.ctx_len, target.ctx_len)):
            if mine != theirs:
                raise ValueError(f"draft_model: its {what} {mine} is not allowed; allowed: the target's {theirs}")

    def start(self, rows, prompts, batch_index, last, rows_total):
        started = time.perf_counter()
        width = max(len(p) for p in prompts)
        batch = len(prompts) if batch_index is not None else self.prefill.batch_size
        chunk = self.prefill.seq_len
        for first in range(0, width, chunk):
            size = min(chunk, width - first) if self.prefill.upper_bound else chunk
            ids = np.zeros((batch, size), dtype=np.int64)
            pos = np.full((batch, size), PAD_POSITION, dtype=np.int64)
            for i, (row, prompt) in enumerate(zip(rows, prompts)):
                part = prompt[first:first + chunk]
                r = i if batch_index is not None else row
                ids[r, :len(part)], pos[r, :len(part)] = part, np.arange(first, first + len(part))
            step(self.session, self.prefill, ids, pos, self.kv, batch_index)
        for row, prompt in zip(rows, prompts):
            self.seen[row] = len(prompt)
        self.seconds += time.perf_counter() - started

    def propose(self, rows, contexts, caps, rows_total, continuous):
        started = time.perf_counter()
        batch_index = np.arange(rows_total, dtype=np.int64)[:, None] if continuous else None
        unseen = {row: list(c[self.seen[row]:]) for row, c in zip(rows, contexts)}
        while any(len(u) > 1 for u in unseen.values()):  # catch up to all but the last token
            feed = {row: u.pop(0) for row, u in unseen.items() if len(u) > 1}
            self._step(feed, rows_total, batch_index)
            for row in feed:
                self.seen[row] += 1
        out = {row: [] for row in rows}
        current = {row: unseen[row][0] for row, k in zip(rows, caps) if k > 0}
        cap = dict(zip(rows, caps))
        for j in range(max(caps, default=0)):
            feed = {row: token for row, token in current.items() if cap[row] > j}
            logits = self._step(feed, rows_total, batch_index, offset=j)
            for row in feed:
                current[row] = int(logits[row, -1].argmax())
                out[row].append(current[row])
        self.fed = cap
        self.seconds += time.perf_counter() - started
        return [out[row] for row in rows]

    def _step(self, feed: Mapping[int, int], rows_total: int, batch_index: np.ndarray | None, offset: int = 0) -> np.ndarray:
        ids = np.zeros((rows_total, 1), dtype=np.int64)
        pos = np.full((rows_total, 1), PAD_POSITION, dtype=np.int64)
        for row, token in feed.items():
            ids[row, 0], pos[row, 0] = token, self.seen[row] + offset
        return step(self.session, self.decode, ids, pos, self.kv, batch_index)

    def verified(self, row, accepted, outputs, position):
        # its KV holds the context but the last token, then that token and proposals 1..cap-1:
        # valid up to the accepted ones (the last proposal, never fed, is caught up next time)
        if self.fed.get(row, 0) > 0:
            self.seen[row] += 1 + min(accepted, self.fed[row] - 1)
