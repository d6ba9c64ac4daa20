"""Mixture-of-experts layers with static shapes: every expert over every token, weighted by its routing.

transformers' default experts implementations group tokens by expert (``histc``, data-dependent
sizes), which neither exporter takes and no fixed-shape compiler can run. Registered in its
experts interface, ``dense_experts`` computes each expert over all tokens and weights it by the
routing weight the token gave it (zero when not among its top k): the same sum, in static
shapes, at num_experts / top_k times the expert FLOPs (what a static graph pays on any target).
"""
from __future__ import annotations

from typing import Any

import torch

DENSE = "ai100pipeline_dense"


def dense_experts(self: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                  top_k_weights: torch.Tensor) -> torch.Tensor:
    """hidden_states [tokens, hidden], top_k_index/top_k_weights [tokens, k] -> [tokens, hidden]."""
    out = torch.zeros_like(hidden_states)
    for e in range(self.num_experts):
        weight = (top_k_weights * (top_k_index == e).to(top_k_weights.dtype)).sum(dim=-1, keepdim=True)  # [tokens, 1]
        if self.has_gate:
            h = self._apply_gate(_linear(self, hidden_states, self.gate_up_proj[e], _bias(self, "gate_up_proj_bias", e)))
        else:
            h = self.act_fn(_linear(self, hidden_states, self.up_proj[e], _bias(self, "up_proj_bias", e)))
        h = _linear(self, h, self.down_proj[e], _bias(self, "down_proj_bias", e))
        if self.has_post_expert_norm:
            h = self.post_expert_norm(h)
        out = out + h * weight.to(h.dtype)
    return out.to(hidden_states.dtype)


def _linear(self: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = x @ weight if self.is_transposed else torch.nn.functional.linear(x, weight)  # [in, out] or [out, in]
    return y if bias is None else y + bias


def _bias(self: Any, name: str, e: int) -> torch.Tensor | None:
    return getattr(self, name)[e] if self.has_bias else None


def use_dense_experts(model: Any) -> bool:
    """Switch the model's experts (those on transformers' experts interface) to ``dense_experts``;
    whether it has any."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if not any(hasattr(m, "has_gate") and hasattr(m, "num_experts") for m in model.modules()):
        return False
    ALL_EXPERTS_FUNCTIONS.register(DENSE, dense_experts)
    model.set_experts_implementation(DENSE)
    return True
