"""The compiled shapes' config keys (compile.*), the same for every target: declared once, read by the passes that shape a graph.

A schema module only (no logic), so the passes reading these keys (the transform and export
for the graph variants, the compile passes, validation) do not take each other's code into
their keys. passes/targets/specializations.py plans the shapes from them; ``ShapeParams`` is
what every compile pass's params start with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from pipeline.pass_api import cfg_field, config_schema


@config_schema("compile")
@dataclass
class CompileShapes:
    """compile.*: a causal LM's compiled shapes."""

    batch_size: int = 1  # sequences per batch
    prefill_seq_len: int = 32  # prefill chunk; 1..ctx_len (cpu preset: min(128, ctx_len); the CPU program runs a shorter last chunk unpadded)
    ctx_len: int = 256  # KV cache length; at most the model's max positions
    full_batch_size: Optional[int] = None   # continuous batching: KV batch dimension
    num_speculative_tokens: Any = None      # speculative target: K, or a list of K


@config_schema("compile")
@dataclass
class EncoderShapes:
    """compile.seq_len: an encoder's compiled lengths (pipeline=embedding)."""

    seq_len: Any = 128                      # one length, or a list (a specialization each)


@dataclass(frozen=True)
class ShapeParams:
    """The compiled shapes as a compile pass reads them: its params extend this with the target's own."""

    batch_size: int = cfg_field(CompileShapes, "batch_size")
    prefill_seq_len: int = cfg_field(CompileShapes, "prefill_seq_len")
    ctx_len: int = cfg_field(CompileShapes, "ctx_len")
    full_batch_size: Any = cfg_field(CompileShapes, "full_batch_size")
    num_speculative_tokens: Any = cfg_field(CompileShapes, "num_speculative_tokens")
    seq_len: Any = cfg_field(EncoderShapes, "seq_len")  # an encoder's lengths (one, or a list)
