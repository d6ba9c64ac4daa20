"""passes.targets.specializations: the compiled shapes planned from the compile config (AI100.md), and
their specializations.json forms. Pure functions: no subprocess, no heavy import."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT
from passes.targets.specializations import check_variant_inputs, names, plan, to_json
from runtime import package_format as fmt


def test_causal_lm_prefill_then_decode():
    assert plan(1, 32, 128) == [
        {"batch_size": 1, "seq_len": 32, "ctx_len": 128},
        {"batch_size": 1, "seq_len": 1, "ctx_len": 128},
    ]
    assert plan(4, 8, 64)[1] == {"batch_size": 4, "seq_len": 1, "ctx_len": 64}


def test_prefill_of_one_token_is_a_single_entry():
    assert plan(2, 1, 128) == [{"batch_size": 2, "seq_len": 1, "ctx_len": 128}]
    assert names(plan(2, 1, 128)) == ["Decode"]


def test_continuous_batching():
    assert plan(1, 32, 128, full_batch_size=4) == [
        {"batch_size": 1, "seq_len": 32, "ctx_len": 128, "full_batch_size": 4},
        {"batch_size": 4, "seq_len": 1, "ctx_len": 128, "full_batch_size": 4},
    ]
    # prefill and decode differ in batch even with a one-token prefill: two entries
    assert [s["batch_size"] for s in plan(1, 1, 128, full_batch_size=4)] == [1, 4]


def test_speculative_target_single_k():
    assert plan(1, 32, 128, num_speculative_tokens=3) == [
        {"batch_size": 1, "seq_len": 32, "ctx_len": 128, "num_logits_to_keep": 1},
        {"batch_size": 1, "seq_len": 4, "ctx_len": 128, "num_logits_to_keep": 4},
    ]
    assert len(plan(1, 1, 128, num_speculative_tokens=3)) == 2  # the prefill keeps 1 logit, decode 4


def test_speculative_target_list_of_k_gives_one_decode_per_k():
    specs = plan(1, 32, 128, num_speculative_tokens=[2, 4])
    assert specs[1:] == [
        {"batch_size": 1, "seq_len": 3, "ctx_len": 128, "num_logits_to_keep": 3},
        {"batch_size": 1, "seq_len": 5, "ctx_len": 128, "num_logits_to_keep": 5},
    ]
    assert plan(1, 32, 128, num_speculative_tokens=(2, 4)) == specs  # frozen params hold tuples
    assert names(specs) == ["Prefill", "Decode", "Decode_K4"]


def test_continuous_batching_with_speculation():
    assert plan(1, 16, 128, full_batch_size=2, num_speculative_tokens=2) == [
        {"batch_size": 1, "seq_len": 16, "ctx_len": 128, "full_batch_size": 2, "num_logits_to_keep": 1},
        {"batch_size": 2, "seq_len": 3, "ctx_len": 128, "full_batch_size": 2, "num_logits_to_keep": 3},
    ]


@pytest.mark.parametrize("args, kwargs, key", [
    ((1, 0, 128), {}, "compile.prefill_seq_len"),
    ((1, 129, 128), {}, "compile.prefill_seq_len"),
    ((0, 32, 128), {}, "compile.batch_size"),
    ((1, 32, 0), {}, "compile.ctx_len"),
    ((1, 32, 128), {"full_batch_size": 0}, "compile.full_batch_size"),
    ((2, 32, 128), {"full_batch_size": 4}, "compile.batch_size"),
    ((1, 32, 128), {"num_speculative_tokens": 0}, "compile.num_speculative_tokens"),
    ((1, 32, 128), {"num_speculative_tokens": [2, 2]}, "compile.num_speculative_tokens"),
    ((1, 32, 128), {"num_speculative_tokens": []}, "compile.num_speculative_tokens"),
    ((1, 32, 128), {"num_speculative_tokens": True}, "compile.num_speculative_tokens"),
    ((1, 4, 8), {"num_speculative_tokens": 8}, "compile.num_speculative_tokens"),
])
def test_bad_values_are_one_line_naming_the_key(args, kwargs, key):
    with pytest.raises(ValueError) as e:
        plan(*args, **kwargs)
    msg = str(e.value)
    assert msg.startswith(f"{key}: ") and "is not allowed; allowed: " in msg and "\n" not in msg


def test_flat_form_has_string_values():
    assert to_json(plan(1, 32, 128)) == {"specializations": [
        {"batch_size": "1", "seq_len": "32", "ctx_len": "128"},
        {"batch_size": "1", "seq_len": "1", "ctx_len": "128"},
    ]}
    assert to_json(plan(1, 32, 128), "flat") == to_json(plan(1, 32, 128))


def test_named_form():
    assert to_json(plan(1, 32, 128), "named") == {"specializations": [
        {"name": "Prefill", "symbols": {"batch_size": "1", "seq_len": "32", "ctx_len": "128"}},
        {"name": "Decode", "symbols": {"batch_size": "1", "seq_len": "1", "ctx_len": "128"}},
    ]}
    named = to_json(plan(1, 32, 128, num_speculative_tokens=[1, 3, 7]), "named")["specializations"]
    assert [e["name"] for e in named] == ["Prefill", "Decode", "Decode_K3", "Decode_K7"]
    assert named[3]["symbols"] == {"batch_size": "1", "seq_len": "8", "ctx_len": "128", "num_logits_to_keep": "8"}
    with pytest.raises(ValueError, match="hw.specialization_format: 'xml' is not allowed"):
        to_json(plan(1, 32, 128), "xml")


def test_missing_graph_variant_input_is_a_clear_error():
    def value(name, role):
        return fmt.IoValue(name, role, "int64", ("batch_size", "seq_len"))

    plain = (value("input_ids", fmt.TOKEN_IDS), value("position_ids", fmt.POSITIONS), value("past_key.0", fmt.PAST_KV))
    io = fmt.Signature(plain, ())
    check_variant_inputs(io, None, None, "compile_ort")  # the plain graph serves the plain plan
    with pytest.raises(RuntimeError, match="compile.full_batch_size=4 needs a graph with a 'batch_index' input"):
        check_variant_inputs(io, 4, None, "compile_ort")
    with pytest.raises(RuntimeError, match="num_speculative_tokens=\\[2, 4\\] needs a graph with a 'num_logits_to_keep'"):
        check_variant_inputs(io, None, (2, 4), "compile_ai100")
    io = fmt.Signature(plain + (value("batch_index", fmt.BATCH_INDEX), value("num_logits_to_keep", fmt.LOGITS_TO_KEEP)), ())
    check_variant_inputs(io, 4, 3, "compile_ort")


def test_the_planner_imports_only_the_standard_library():
    code = ("import sys; import passes.targets.specializations; "
            "print(sorted(m for m in ('numpy', 'onnx', 'torch', 'omegaconf') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr
