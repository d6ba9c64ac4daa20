"""Bad input: one line naming key, value and what is allowed; exit 2; the store untouched."""
from __future__ import annotations

import time

import pytest

from conftest import run_pipeline, store_snapshot

BAD = [
    (["model=nope"], "model: 'nope'"),
    (["hw=nope"], "hw: 'nope'"),
    (["hw.num_cores=abc"], "hw.num_cores: 'abc'"),
    (["hw.num_cores=0"], "hw.num_cores: 0"),
    (["hw.num_cores=-2"], "hw.num_cores: -2"),
    (["compile.prefill_seq_len=300", "compile.ctx_len=256"], "compile.prefill_seq_len: 300"),
    (["compile.ctx_len=100000"], "compile.ctx_len: 100000"),
    (["hw.bogus=1"], "hw.bogus"),
    (["model.source=gguf", "model.path=/nonexistent/model.gguf"], "model.path: '/nonexistent/model.gguf'"),
    (["model.source=local", "model.path=/nonexistent/folder"], "model.path: '/nonexistent/folder'"),
    (["rewrite.rules=[optimize,nope]"], "rewrite.rules: 'nope'"),
    (["pipeline.force=[nope]"], "pipeline.force: 'nope'"),
    (["compile.num_speculative_tokens=0"], "compile.num_speculative_tokens: 0"),
    (["compile.num_speculative_tokens=[3,300]"], "compile.num_speculative_tokens: [3, 300]"),
    (["compile.full_batch_size=0"], "compile.full_batch_size: 0"),
    (["hw.target=gpu"], "hw.target: 'gpu' is not allowed; allowed: ai100 | cpu"),
    (["export.opset=9"], "export.opset: 9 is not allowed; allowed: 14..21"),
    (["validate.max_new_tokens=256"], "validate.max_new_tokens: 256 is not allowed; allowed: 1..255"),
    (["validate.atol=0"], "validate.atol: 0.0 is not allowed; allowed: a number > 0"),
    (["model.source=nope"], "model.source: 'nope' is not allowed; allowed: hub | local | gguf | random"),
    (["hw.attention=flash"], "hw.attention: 'flash' is not allowed; allowed: scatter | gqa"),
    (["hw.mxfp6_matmul=true"], "allowed keys of hw: target, compile_pass, num_cores, attention"),
]


@pytest.mark.parametrize("overrides,expected", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_leaves_the_store(store, overrides, expected):
    before = store_snapshot(store)
    r = run_pipeline(store, *overrides)
    assert r.rc == 2, r.out + r.err
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.err
    assert expected in lines[0], lines[0]
    assert "allowed" in lines[0] or "not a config key" in lines[0]
    assert "Traceback" not in r.out + r.err
    assert store_snapshot(store) == before


def test_hub_model_without_network_fails_in_seconds(empty_store):
    t0 = time.monotonic()
    r = run_pipeline(empty_store, model="llama3")
    assert r.rc == 2, r.out + r.err
    assert time.monotonic() - t0 < 60
    assert "model.hf_id: 'meta-llama/Meta-Llama-3-8B'" in r.err
    assert store_snapshot(empty_store) == set()
