"""The static KV cache: transformers' Cache over the graph's past tensors, one kind per ``hw.attention``.

``scatter_cache`` for the AI 100 convention (the KV ops of ctx_ops.py), ``new_rows_cache`` for
GroupQueryAttention, which writes the past itself (gqa.py). Imported only when the transform
runs (torch).
"""
from __future__ import annotations

from typing import Sequence

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from passes.transforms import ctx_ops


class ScatterLayer(CacheLayerMixin):
    """One layer's cache in the AI 100 convention: the new rows written into the past with CtxScatter
    (CtxScatterCB into the batch's KV rows), attention reading it through CtxGather (CtxGatherCB)."""

    is_compileable = True
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, read: torch.Tensor,
                 batch_index: torch.Tensor | None = None):
        super().__init__()
        self.keys, self.values, self.is_initialized = keys, values, True
        self.positions, self.read, self.batch_index = positions, read, batch_index

    def lazy_initialization(self, key_states, value_states) -> None:
        pass

    def _write(self, past: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ops = torch.ops.ai100pipeline
        if self.batch_index is None:
            written = ops.ctx_scatter(past, self.positions, new)
            return written, ops.ctx_gather(written, self.read)
        written = ops.ctx_scatter_cb(past, self.batch_index, self.positions, new)
        return written, ops.ctx_gather_cb(written, self.batch_index, self.read)

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys, keys = self._write(self.keys, key_states)
        self.values, values = self._write(self.values, value_states)
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[-2], 0

    def get_seq_length(self) -> int:
        return 0

    def get_max_length(self) -> int:
        return self.keys.shape[-2]


class NewRowsLayer(ScatterLayer):
    """GQA writes the cache itself: the layer hands the attention the new rows only."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__(keys, values, None, None)

    def update(self, key_states, value_states, *args, **kwargs):
        return key_states, value_states


def scatter_cache(past: Sequence[torch.Tensor], position_ids: torch.Tensor, ctx_len: int,
                  batch_index: torch.Tensor | None = None) -> Cache:
    """``past``: each layer's key then value. Padding (-1) writes the last slot, which the runtime
    keeps clear of real tokens in a padded step."""
    read = ctx_ops.read_indices(position_ids, ctx_len)
    return Cache(layers=[ScatterLayer(keys, values, position_ids, read, batch_index)
                         for keys, values in zip(past[::2], past[1::2])])


def new_rows_cache(past: Sequence[torch.Tensor]) -> Cache:
    """``past``: each layer's key then value."""
    return Cache(layers=[NewRowsLayer(keys, values) for keys, values in zip(past[::2], past[1::2])])

