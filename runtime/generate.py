"""Greedy generation over a Session: chunked prefill, then a decode loop over the retained KV state.

Written against the Session protocol and the package's roles: the prefill and decode
specializations by role, every input and output by role (runtime.package_format).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from runtime import package_format as fmt
from runtime.session import Session

PAD_POSITION = -1


@dataclass
class Generation:
    tokens: list[list[int]]            # new tokens per sequence
    logits: np.ndarray                 # [batch, new tokens, vocab]: the logits that chose each token
    metrics: dict[str, float] = field(default_factory=dict)


def generate(session: Session, prompts: Sequence[int] | Sequence[Sequence[int]], max_new_tokens: int,
             adapters: Sequence[int] | None = None) -> Generation:
    """Greedy decoding of `max_new_tokens` per prompt (no EOS stop).

    `prompts`: one token list, or one per row of the prefill batch (a single prompt fills every row).
    `adapters`: each row's LoRA slot (runtime.adapters; default: none), for a package with adapters.
    """
    program = session.program
    prefill, decode = program.spec(fmt.PREFILL), program.decode_spec(1)
    if prefill is None:
        raise ValueError(f"generate: the package has no prefill specialization ({[s.name for s in program.specializations]})")
    rows = _rows(prefill.batch_size, prompts)
    batch, lengths = len(rows), [len(r) for r in rows]
    if min(lengths) == 0:
        raise ValueError("generate: empty prompt")
    # The last cache slot takes padding writes during prefill (see the static-KV transform).
    if max(lengths) + max_new_tokens > program.ctx_len:
        raise ValueError(f"generate: prompt ({max(lengths)}) + new tokens ({max_new_tokens}) "
                         f"exceed the context length {program.ctx_len}")
    vocab = program.signature.dims["vocab_size"]
    logits = np.zeros((batch, max_new_tokens, vocab), dtype=np.float32)
    tokens = np.zeros((batch, max_new_tokens), dtype=np.int64)

    start = time.perf_counter()
    kv = session.new_kv()
    chunk = prefill.seq_len
    for first in range(0, max(lengths), chunk):
        width = min(chunk, max(lengths) - first) if prefill.upper_bound else chunk  # a dynamic graph: no padding
        ids = np.zeros((batch, width), dtype=np.int64)
        pos = np.full((batch, width), PAD_POSITION, dtype=np.int64)
        for r, row in enumerate(rows):
            part = row[first:first + chunk]
            ids[r, :len(part)] = part
            pos[r, :len(part)] = np.arange(first, first + len(part))
        out = step(session, prefill, ids, pos, kv, adapter_ids=adapters)
        for r, n in enumerate(lengths):
            if first <= n - 1 < first + chunk:  # this chunk holds the row's last prompt token
                logits[r, 0] = out[r, -1]
    tokens[:, 0] = logits[:, 0].argmax(-1)
    prefill_seconds = time.perf_counter() - start

    decode_start = time.perf_counter()
    positions = np.array(lengths, dtype=np.int64)
    for i in range(1, max_new_tokens):
        out = step(session, decode, tokens[:, i - 1: i], positions[:, None] + i - 1, kv, adapter_ids=adapters)
        logits[:, i] = out[:, -1]
        tokens[:, i] = logits[:, i].argmax(-1)
    decode_seconds = time.perf_counter() - decode_start

    steps = max_new_tokens - 1
    total = prefill_seconds + decode_seconds
    metrics = {
        "prompt_tokens": float(max(lengths)),
        "new_tokens": float(max_new_tokens),
        "batch_size": float(batch),
        "prefill_seconds": prefill_seconds,  # time to first token
        "decode_seconds": decode_seconds,
        "decode_tokens_per_second": steps / decode_seconds if steps and decode_seconds > 0 else 0.0,
        "decode_tokens_per_second_batch": batch * steps / decode_seconds if steps and decode_seconds > 0 else 0.0,
        "total_seconds": total,
        "total_tokens_per_second": batch * max_new_tokens / total if total > 0 else 0.0,
    }
    return Generation([t.tolist() for t in tokens], logits, metrics)


def _rows(batch_size: int, prompts: Sequence[object]) -> list[list[int]]:
    if prompts and isinstance(prompts[0], (int, np.integer)):
        prompts = [prompts] * batch_size
    rows = [[int(t) for t in p] for p in prompts]
    if len(rows) != batch_size:
        raise ValueError(f"generate: {len(rows)} prompts for a package built for batch size {batch_size}")
    return rows


def step(session: Session, spec: fmt.Specialization, ids: np.ndarray, pos: np.ndarray,
         kv: dict[str, np.ndarray], batch_index: np.ndarray | None = None,
         adapter_ids: Sequence[int] | None = None) -> np.ndarray:
    """``run_step``'s logits."""
    return run_step(session, spec, ids, pos, kv, batch_index, adapter_ids)[fmt.LOGITS]


def run_step(session: Session, spec: fmt.Specialization, ids: np.ndarray, pos: np.ndarray,
             kv: dict[str, np.ndarray], batch_index: np.ndarray | None = None,
             adapter_ids: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """One run of a specialization; the retained KV outputs become the next step's past (in
    ``kv``). Returns the other outputs of the given rows by role (logits[, proposals]).

    ids and pos are padded to the specialization's shape (position -1: writes no KV row or slot).
    Continuous batching: input row r uses KV row ``batch_index[r]`` (default: r). Speculative
    target: the logits of the last num_logits_to_keep valid positions come back (of a shape
    that is an upper bound: of at most as many positions as were fed), ``[:, -1]`` being the last one.
    LoRA: row r uses adapter slot ``adapter_ids[r]`` (default: none, slot 0).
    """
    sig = session.program.signature
    rows = len(ids)
    feeds = step_feeds(session, spec, ids, pos, kv, batch_index, adapter_ids)
    kv_rows = None if batch_index is None else np.asarray(batch_index, dtype=np.int64).reshape(spec.batch_size, 1)
    out = session.run(spec, feeds, kv_rows)
    if not session.keeps_kv:
        for past in sig.past_kv():
            kv[past.name] = out[sig.retained(past).name]
    return {v.role: out[v.name][:rows] for v in sig.outputs if v.role != fmt.RETAINED_KV and v.name in out}


def step_feeds(session: Session, spec: fmt.Specialization, ids: np.ndarray, pos: np.ndarray,
               kv: dict[str, np.ndarray], batch_index: np.ndarray | None = None,
               adapter_ids: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """The feeds of one run of ``spec`` (``run_step``'s inputs, padded to the specialization's shape)."""
    sig = session.program.signature
    rows = len(ids)
    # a specialization that is an upper bound takes any length up to it: no need to pad the sequence
    seq = ids.shape[1] if spec.upper_bound else spec.seq_len
    pad = ((0, spec.batch_size - rows), (0, seq - ids.shape[1]))
    if min(pad[0][1], pad[1][1]) < 0:
        raise ValueError(f"generate: {ids.shape} tokens do not fit specialization {spec.name} "
                         f"({spec.batch_size} x {spec.seq_len})")
    if pad != ((0, 0), (0, 0)):
        ids, pos = np.pad(ids, pad), np.pad(pos, pad, constant_values=PAD_POSITION)
    feeds = {sig.input(fmt.TOKEN_IDS).name: ids, sig.input(fmt.POSITIONS).name: pos, **kv}
    kv_rows = None if batch_index is None else np.asarray(batch_index, dtype=np.int64).reshape(spec.batch_size, 1)
    if (index := sig.input(fmt.BATCH_INDEX)) is not None:
        feeds[index.name] = np.arange(spec.batch_size, dtype=np.int64)[:, None] if kv_rows is None else kv_rows
    if (lora := sig.input(fmt.ADAPTER_IDS)) is not None:
        slots = np.zeros((ids.shape[0], 1), dtype=np.int64)
        if adapter_ids is not None:
            slots[:rows, 0] = np.asarray(adapter_ids, dtype=np.int64).reshape(-1)[:rows]
        feeds[lora.name] = slots
    if (keep := sig.input(fmt.LOGITS_TO_KEEP)) is not None:
        kept = int(spec.symbols.get("num_logits_to_keep", 1))
        feeds[keep.name] = np.zeros((min(kept, seq) if spec.upper_bound else kept, 1), dtype=np.int64)
    return feeds
