"""Both exporters (``export.dynamo`` false | true) give programs whose greedy tokens equal HF's:
tiny Llama in both graphs here (the coverage matrix runs the TorchScript exporter over every
family), the real SmolLM2 in tests/test_real_model.py."""
from __future__ import annotations

import pytest

pytest.importorskip("torch")

from model_families import check  # noqa: E402


@pytest.mark.parametrize("variant", ["cpu", "ai100"])
def test_the_dynamo_exporter_on_tiny_llama(variant):
    """The CPU program (GroupQueryAttention; batch 2, prompts of different lengths) and the AI 100
    graph (continuous batching and speculative decoding at once), exported by torch.export."""
    outcome = check("llama", variant, dynamo=True)
    assert outcome.passed, outcome
    assert outcome.attention == ("gqa" if variant == "cpu" else "scatter")
