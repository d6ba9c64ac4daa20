"""Requests that arrive while others run: each takes a free KV row (its slot) at once.

One thread owns the session and loops: free slots take waiting requests (each prefilled
alone into its row), then one decode step advances every occupied slot. A package compiled
with ``full_batch_size`` has that many slots (rows addressed by batch_index); any other has
``batch_size`` slots, a request prefilled in its own row while the others are padding (which
writes nothing). Every decode step has the same shape whatever the occupancy, so a request
gets the same tokens alone or among others. Each request has its own sampling (seeded by its
seed alone), stop strings and limit; a cancelled one (a client gone) frees its slot at the
next step. Events go to the request's ``emit`` from the engine thread. A request whose prefill,
sampling, text or client fails ends alone with an error, its slot freed; a failed decode step
(the one run every slot shares) fails the requests it ran.

Log-probabilities (``Job.logprobs``: how many alternatives per position): of each token chosen,
and with ``score_prompt`` of the prompt's tokens too (what a harness scores text by, e.g.
lm-eval's ``local-completions``). A prefill returns the last position's logits only, so a
scored prompt is prefilled with its first token and then fed one token a step through the
decode graph in its slot (teacher forcing), beside the other slots' generation; its last prompt
position's logits then choose its first new token as usual.
"""
from __future__ import annotations

import itertools
import queue
import threading
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from runtime import package_format as fmt
from runtime.generate import PAD_POSITION, step
from runtime.sampling import Sampler, SamplingParams
from runtime.scheduler import Request, Scheduler, adapter_slots
from runtime.server.text import TextTracker

_ids = itertools.count()


@dataclass(eq=False)
class Job:
    """One sequence to generate. ``emit(kind, data)``: ("text", piece) as it comes, then ("done",
    {"finish_reason", "prompt_tokens", "completion_tokens", "text"}) or ("error", message)."""

    prompt_ids: list[int]
    max_new_tokens: int
    emit: Callable[[str, Any], None]
    sampling: SamplingParams = SamplingParams()
    stop: Sequence[str] = ()
    adapter: int = 0
    logprobs: int | None = None   # None: none; k: the chosen token's and the k likeliest per position
    score_prompt: bool = False    # also the prompt tokens' (from the second on)
    id: int = field(default_factory=lambda: next(_ids))
    ids: list[int] = field(default_factory=list)
    cancelled: bool = False
    fed: int = 0                  # prompt tokens fed so far (a scored prompt is fed one a step)
    scores: list[tuple[float, dict[int, float]]] = field(default_factory=list)  # (logprob, top k) per scored token

    def request(self) -> Request:
        prompt = self.prompt_ids[:1] if self.forcing else self.prompt_ids
        return Request(self.id, prompt, self.max_new_tokens, self.adapter)

    @property
    def forcing(self) -> bool:
        """Whether the prompt is still being fed a token a step (a scored prompt of 2+ tokens)."""
        return self.score_prompt and len(self.prompt_ids) > 1 and self.fed < len(self.prompt_ids)


class Engine:
    def __init__(self, session: Any, tokenizer: Any, eos_ids: Sequence[int]):
        self.scheduler = Scheduler(session, eos_ids)
        self.session, self.tokenizer = session, tokenizer
        self.eos = self.scheduler.eos
        rows = self.scheduler.decode.batch_size
        self.slots: list[Job | None] = [None] * rows
        self.inbox: queue.Queue[Job | None] = queue.Queue()
        self.waiting: deque[Job] = deque()
        self.decode_steps = 0  # decode calls run so far (each advances every occupied slot)
        self.finished: Counter[str] = Counter()  # requests ended, by finish reason
        self.failed = 0
        self.tokens = {"prompt": 0, "completion": 0}
        self._state: dict[int, tuple[Sampler, TextTracker]] = {}
        self._kv = session.new_kv()
        self._admitting: Job | None = None  # the job being prefilled (in no slot yet)
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    @property
    def ctx_len(self) -> int:
        return self.scheduler.ctx_len

    def check(self, job: Job) -> None:
        """ValueError, one line, for a prompt that does not fit or a limit below 1."""
        self.scheduler.check([Request(job.id, job.prompt_ids, job.max_new_tokens, job.adapter)])

    def submit(self, job: Job) -> None:
        self.check(job)
        job.sampling.check()
        self.inbox.put(job)

    def cancel(self, job: Job) -> None:
        job.cancelled = True

    def load(self) -> dict[str, int]:
        """Requests in slots (``running``) and not yet in one (``waiting``)."""
        return {"running": sum(j is not None for j in self.slots) + (self._admitting is not None),
                "waiting": len(self.waiting) + self.inbox.qsize()}

    def stats(self) -> dict[str, Any]:
        """What the engine served: requests by how they ended, tokens, decode steps."""
        return {"requests": {**self.finished, "failed": self.failed}, "prompt_tokens": self.tokens["prompt"],
                "completion_tokens": self.tokens["completion"], "decode_steps": self.decode_steps}

    def close(self) -> None:
        self.inbox.put(None)
        self._thread.join(timeout=10)

    # ---- the engine thread
    def _loop(self) -> None:
        while True:
            if not self._take(block=not any(self.slots) and not self.waiting):
                return
            try:
                self._admit()
                if any(self.slots):
                    self._decode()
            except Exception as exc:  # noqa: BLE001 - a decode step failed: the requests it ran fail, serving goes on
                traceback.print_exc()
                for job in filter(None, self.slots):
                    self._fail(job, f"{type(exc).__name__}: {exc}")
                self.slots = [None] * len(self.slots)
                self._kv = self.session.new_kv()

    def _take(self, block: bool) -> bool:
        """Move arrived jobs to ``waiting``; False once closed."""
        try:
            while True:
                job = self.inbox.get(block=block)
                block = False
                if job is None:
                    return False
                self.waiting.append(job)
        except queue.Empty:
            return True

    def _admit(self) -> None:
        for s in range(len(self.slots)):
            if self.slots[s] is not None:
                continue
            while self.waiting:
                job = self._admitting = self.waiting.popleft()
                if job.cancelled:
                    continue
                try:
                    going = self._prefill(job, s)
                except Exception as exc:  # noqa: BLE001 - its prefill wrote only its own row: it alone fails
                    traceback.print_exc()
                    self._fail(job, f"{type(exc).__name__}: {exc}")
                    going = False
                self._admitting = None
                if going:
                    self.slots[s] = job
                    break

    def _prefill(self, job: Job, s: int) -> bool:
        """The job's prompt into KV row ``s`` and its first token; True while it goes on."""
        self._state[job.id] = (Sampler(job.sampling, 0), TextTracker(self.tokenizer, job.stop))
        if self.scheduler.continuous:
            rows: list[Request | None] = [job.request()]
            batch_index = np.array([[s]], dtype=np.int64)
        else:
            rows = [job.request() if r == s else None for r in range(len(self.slots))]
            batch_index = None
        logits = self.scheduler.prefill_rows(rows, self._kv, batch_index)[fmt.LOGITS]
        row = logits[0 if batch_index is not None else s]
        if job.forcing:  # the first prompt token went in: score the second, feed the rest a step each
            job.fed = 1
            self._score(job, row, job.prompt_ids[1])
            return True
        job.fed = len(job.prompt_ids)
        return self._choose(job, row)

    def _decode(self) -> None:
        for s, job in enumerate(self.slots):
            if job is not None and job.cancelled:
                self._finish(job, "cancelled")
                self.slots[s] = None
        if not any(self.slots):
            return
        ids = np.zeros((len(self.slots), 1), dtype=np.int64)
        pos = np.full((len(self.slots), 1), PAD_POSITION, dtype=np.int64)
        for s, job in enumerate(self.slots):
            if job is not None and job.forcing:
                ids[s, 0], pos[s, 0] = job.prompt_ids[job.fed], job.fed
            elif job is not None:
                ids[s, 0], pos[s, 0] = job.ids[-1], len(job.prompt_ids) + len(job.ids) - 1
        batch_index = np.arange(len(self.slots), dtype=np.int64)[:, None] if self.scheduler.continuous else None
        logits = step(self.session, self.scheduler.decode, ids, pos, self._kv, batch_index,
                      adapter_slots([j.request() if j else None for j in self.slots]))
        self.decode_steps += 1
        for s, job in enumerate(self.slots):
            if job is None:
                continue
            try:
                going = self._advance(job, logits[s, -1])
            except Exception as exc:  # noqa: BLE001 - this row's sampling or text failed: it alone fails
                traceback.print_exc()
                self._fail(job, f"{type(exc).__name__}: {exc}")
                going = False
            if not going:
                self.slots[s] = None

    def _advance(self, job: Job, logits: np.ndarray) -> bool:
        """A decode step's logits for the job's row: the next prompt token scored, or its next token; True while it goes on."""
        if job.forcing:
            job.fed += 1
            if job.fed < len(job.prompt_ids):
                self._score(job, logits, job.prompt_ids[job.fed])
                return True
        return self._choose(job, logits)

    def _choose(self, job: Job, logits: np.ndarray) -> bool:
        """Take the next token; True while the job goes on."""
        sampler, text = self._state[job.id]
        token = sampler(logits, (*job.prompt_ids, *job.ids) if job.sampling.repetition_penalty != 1.0 else ())
        self._score(job, logits, token)
        job.ids.append(token)
        if token in self.eos:
            self._finish(job, "stop")
            return False
        piece = text.push(job.ids)
        if piece:
            job.emit("text", piece)
        if text.stopped:
            self._finish(job, "stop")
            return False
        next_position = len(job.prompt_ids) + len(job.ids) - 1
        if len(job.ids) >= job.max_new_tokens or next_position >= self.scheduler.write_limit:
            self._finish(job, "length")
            return False
        return True

    def _finish(self, job: Job, reason: str) -> None:
        _, text = self._state.pop(job.id)
        self.finished[reason] += 1
        self.tokens["prompt"] += len(job.prompt_ids)
        self.tokens["completion"] += len(job.ids)
        piece = text.finish(job.ids)
        if piece:
            job.emit("text", piece)
        job.emit("done", {"finish_reason": reason, "prompt_tokens": len(job.prompt_ids),
                          "completion_tokens": len(job.ids), "text": text.sent, "ids": list(job.ids),
                          "scores": job.scores if job.logprobs is not None else None})

    @staticmethod
    def _score(job: Job, logits: np.ndarray, token: int) -> None:
        """The log-probability of ``token`` under ``logits`` (the model's, before sampling's changes), and the top k."""
        if job.logprobs is None:
            return
        x = logits.astype(np.float64)
        shifted = x - x.max()
        logp = shifted - np.log(np.exp(shifted).sum())
        top = np.argsort(-logp)[:job.logprobs] if job.logprobs else []
        job.scores.append((float(logp[token]), {int(t): float(logp[t]) for t in top}))

    def _fail(self, job: Job, message: str) -> None:
        self._state.pop(job.id, None)
        self.failed += 1
        try:
            job.emit("error", message)
        except Exception:  # noqa: BLE001 - its client is gone (its event loop closed): nothing to tell
            pass
