"""The cpu target's ``hw.attention=auto`` (the default): GroupQueryAttention where a family takes transformers'
attention interface, the scatter graph elsewhere, chosen before anything runs and said by the run."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_pipeline
from model_families import FAMILIES, tiny_model
from passes.lib.transformers_source import attention_support

FALCON = ("model.hf_config={model_type: falcon, vocab_size: 49152, hidden_size: 64, num_hidden_layers: 2, "
          "num_attention_heads: 4, num_kv_heads: 2, new_decoder_architecture: true, alibi: false, parallel_attn: true, "
          "max_position_embeddings: 512, bos_token_id: 1, eos_token_id: 2}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_source_scan_agrees_with_the_model_classes(family):
    """What the plan reads from transformers' source (cheaply) is what the transform finds on the model."""
    model = tiny_model(family)
    takes = bool(model._supports_attention_backend) and not any(
        getattr(m, "sinks", None) is not None for m in model.modules())
    assert attention_support(family)[0] is takes, attention_support(family)


def test_a_family_outside_the_interface_builds_with_default_settings(empty_store, store):
    """Falcon stopped the default CPU build before (hw.attention was gqa); auto takes the scatter graph and says so."""
    r = run_pipeline(empty_store, FALCON)
    assert r.rc == 0, r.out + r.err
    chose = "hw.attention: auto -> scatter (FalconForCausalLM does not take transformers' attention interface)"
    assert chose in r.out and r.summary["chosen"] == [chose]
    assert r.summary["validation"]["passed"]
    assert (Path(r.summary["package"]) / "decode.onnx").is_file()  # the scatter program: a fixed-shape graph per shape
    llama = run_pipeline(store)  # the session's tiny_llama build, with the defaults
    assert "hw.attention: auto -> gqa (LlamaForCausalLM takes transformers' attention interface)" in llama.out
    explicit = run_pipeline(store, "hw.attention=gqa")
    assert explicit.rc == 0 and "hw.attention:" not in explicit.out  # nothing to choose
    assert set(explicit.status().values()) == {"cached"}, explicit.status()  # auto's choice keys as the value it chose
