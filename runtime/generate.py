"""Greedy generation over a Session: chunked prefill, then a decode loop over the retained KV state."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

PAD_POSITION = -1


@dataclass
class Generation:
    tokens: list[list[int]]            # new tokens per sequence
    logits: np.ndarray                 # [batch, new tokens, vocab]: the logits that chose each token
    metrics: dict[str, float] = field(default_factory=dict)


def generate(session: Any, prompts: Sequence[int] | Sequence[Sequence[int]], max_new_tokens: int) -> Generation:
    """Greedy decoding of `max_new_tokens` per prompt (no EOS stop).

    `prompts`: one token list, or one per batch row (a single prompt fills every row).
    """
    rows = _rows(session, prompts)
    batch, lengths = len(rows), [len(r) for r in rows]
    if min(lengths) == 0:
        raise ValueError("generate: empty prompt")
    # The last cache slot takes padding writes during prefill (see the static-KV transform).
    if max(lengths) + max_new_tokens > session.ctx_len:
        raise ValueError(f"generate: prompt ({max(lengths)}) + new tokens ({max_new_tokens}) "
                         f"exceed the context length {session.ctx_len}")
    vocab = session.dims["vocab_size"]
    logits = np.zeros((batch, max_new_tokens, vocab), dtype=np.float32)
    tokens = np.zeros((batch, max_new_tokens), dtype=np.int64)

    start = time.perf_counter()
    past = session.empty_past()
    chunk = session.seq_lens[0]
    for first in range(0, max(lengths), chunk):
        ids = np.zeros((batch, chunk), dtype=np.int64)
        pos = np.full((batch, chunk), PAD_POSITION, dtype=np.int64)
        for r, row in enumerate(rows):
            part = row[first:first + chunk]
            ids[r, :len(part)] = part
            pos[r, :len(part)] = np.arange(first, first + len(part))
        out = _step(session, ids, pos, past)
        for r, n in enumerate(lengths):
            if first <= n - 1 < first + chunk:  # this chunk holds the row's last prompt token
                logits[r, 0] = out["logits"][r, -1]
    tokens[:, 0] = logits[:, 0].argmax(-1)
    prefill_seconds = time.perf_counter() - start

    decode_start = time.perf_counter()
    positions = np.array(lengths, dtype=np.int64)
    for i in range(1, max_new_tokens):
        out = _step(session, tokens[:, i - 1: i], positions[:, None] + i - 1, past)
        logits[:, i] = out["logits"][:, -1]
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


def _rows(session: Any, prompts: Sequence[Any]) -> list[list[int]]:
    if prompts and isinstance(prompts[0], (int, np.integer)):
        prompts = [prompts] * session.batch_size
    rows = [[int(t) for t in p] for p in prompts]
    if len(rows) != session.batch_size:
        raise ValueError(f"generate: {len(rows)} prompts for a package built for batch size {session.batch_size}")
    return rows


def _step(session: Any, ids: np.ndarray, pos: np.ndarray, past: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One graph run; the retained-state outputs become the next step's past (updated in place)."""
    rows = len(ids)
    ids, pos = _pad_to_shape(session, ids, pos)
    feeds = {"input_ids": ids, "position_ids": pos, **past}
    # Graph variants: known from the graph's inputs, or from the compiled shape's symbols.
    names = getattr(session, "input_names", ())
    shape = next((s for s in getattr(session, "shapes", ()) if (s["batch_size"], s["seq_len"]) == ids.shape), {})
    if "batch_index" in names or "full_batch_size" in shape:  # continuous batching: row r uses KV row r
        feeds["batch_index"] = np.arange(len(ids), dtype=np.int64)[:, None]
    if "num_logits_to_keep" in names or "num_logits_to_keep" in shape:
        # Speculative target: logits of the last n valid positions; [:, -1] is the last one.
        keep = shape.get("num_logits_to_keep", 1)
        feeds["num_logits_to_keep"] = np.zeros((keep, 1), dtype=np.int64)
    out = session.run(feeds)
    for name in past:
        past[name] = out[f"{name}_RetainedState"]
    return {**out, "logits": out["logits"][:rows]}


def _pad_to_shape(session: Any, ids: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pad to the smallest compiled shape that holds [rows, seq] when none is exact: variant
    packages decode with seq_len K+1 (speculative) or batch full_batch_size (continuous
    batching). Padding has position -1, so it changes no KV row or slot."""
    shapes = {(shape["batch_size"], shape["seq_len"]) for shape in getattr(session, "shapes", ())}
    b, s = ids.shape
    fits = [(bb, ss) for bb, ss in shapes if bb >= b and ss >= s]
    if (b, s) in shapes or not fits:
        return ids, pos
    to_b, to_s = min(fits)
    pad = ((0, to_b - b), (0, to_s - s))
    return np.pad(ids, pad), np.pad(pos, pad, constant_values=PAD_POSITION)
