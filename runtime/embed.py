"""Embeddings from an embedding package: tokenize, batch, run each batch in the shortest compiled length that holds it.

Texts are sorted by length so a batch holds texts of like lengths (less padding), run in
batches of the package's batch size, and returned in the caller's order. A program whose
shapes are upper bounds (the CPU program: one dynamic graph) runs each batch unpadded; fixed
shapes (an AI 100 program) get padded to their length and batch size (masked, so padding
changes nothing). Texts longer than the longest compiled length are cut to it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime import package_format as fmt


@dataclass
class EmbedRun:
    embeddings: np.ndarray                # [texts, hidden] float32, in the caller's order
    tokens: int                           # real (unpadded) tokens embedded
    seconds: float
    lengths: dict[int, int] = field(default_factory=dict)  # compiled length -> batches run in it

    @property
    def metrics(self) -> dict[str, Any]:
        n = len(self.embeddings)
        return {"texts": n, "tokens": self.tokens, "seconds": round(self.seconds, 4),
                "sentences_per_s": round(n / self.seconds, 2) if self.seconds else None,
                "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else None,
                "batches_by_length": {str(k): v for k, v in sorted(self.lengths.items())}}


class Embedder:
    """An embedding package, loaded: ``embed(texts)``."""

    def __init__(self, package: str | Path, onnx_view: bool = False, num_threads: int | None = None,
                 verify: bool | None = None):
        """The package's own target's session runs it, or ``onnx_view``: ONNX Runtime on its ONNX graphs."""
        from runtime.sessions import open_onnx, open_session
        from runtime.tokenizer import load_tokenizer

        opened = open_onnx if onnx_view else open_session
        self.session = opened(package, verify=verify, **({"num_threads": num_threads} if num_threads else {}))
        self.program = self.session.program
        signature = self.program.signature
        if signature.kind != fmt.EMBEDDING:
            raise ValueError(f"{package}: a {signature.kind} package, not an embedding package")
        self.ids = signature.input(fmt.TOKEN_IDS).name
        self.mask = signature.input(fmt.ATTENTION_MASK).name
        self.output = signature.output(fmt.POOLED_OUTPUT).name
        specs = [s for s in self.program.specializations if fmt.EMBED in s.roles]
        self.max_length = max(s.seq_len for s in specs)
        self.batch_size = max(s.batch_size for s in specs)
        self.tokenizer = load_tokenizer(package)
        self.pad_id = self.tokenizer.pad_token_id or 0

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        from runtime.tokenizer import truncated_text

        texts = [truncated_text(self.tokenizer, t, self.max_length) for t in texts]  # a huge text costs a small one's
        return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]

    def embed(self, texts: Sequence[str]) -> EmbedRun:
        started = time.perf_counter()
        ids = self.encode(texts)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = np.zeros((len(ids), int(self.program.signature.dims["hidden_size"])), dtype=np.float32)
        lengths: dict[int, int] = {}
        for first in range(0, len(order), self.batch_size):
            rows = order[first:first + self.batch_size]
            longest = max(len(ids[i]) for i in rows)
            spec = self.program.embed_spec(longest)
            width = longest if spec.upper_bound else spec.seq_len
            height = len(rows) if spec.upper_bound else spec.batch_size
            batch = np.full((height, width), self.pad_id, dtype=np.int64)
            mask = np.zeros((height, width), dtype=np.int64)
            for r, i in enumerate(rows):
                batch[r, :len(ids[i])] = ids[i]
                mask[r, :len(ids[i])] = 1
            result = self.session.run(spec, {self.ids: batch, self.mask: mask})
            out[rows] = result[self.output][:len(rows)]
            lengths[spec.seq_len] = lengths.get(spec.seq_len, 0) + 1
        return EmbedRun(out, sum(len(x) for x in ids), time.perf_counter() - started, lengths)
