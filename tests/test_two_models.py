"""Two models in one DAG (pipeline=causal_lm_draft): each chain bound to its own config root,
keyed, cached, explained and validated on its own; one key builds once."""
from __future__ import annotations

import json

from conftest import run_pipeline, store_snapshot

TARGET = ["load", "transform", "export", "rewrite", "compile", "quantize", "package", "twin", "reference", "validate"]
DRAFT = [f"draft_{s}" for s in TARGET]
TWO = ("pipeline=causal_lm_draft",)


def test_two_models_build_and_validate_each_on_its_own(store):
    r = run_pipeline(store, *TWO, "draft_model=tiny_llama", "draft_model.seed=1")
    assert r.rc == 0, r.out + r.err
    st = r.status()
    assert list(st) == TARGET + DRAFT  # the causal_lm stage names are kept; the draft chain is draft_*
    assert {st[s] for s in TARGET} == {"cached"}, st  # the target was built by the session fixture
    assert {st[s] for s in DRAFT} == {"ran"}, st
    roles = {s["name"]: s["role"] for s in r.summary["stages"]}
    assert {roles[s] for s in TARGET} == {"model"} and {roles[s] for s in DRAFT} == {"draft_model"}
    s = r.summary
    assert set(s["packages"]) == {"model", "draft_model"} and s["package"] == s["packages"]["model"]
    assert s["packages"]["model"] != s["packages"]["draft_model"]
    assert s["validations"]["draft_model"]["passed"] and s["validations"]["model"]["passed"]
    assert "validation (draft_model): passed" in r.out and "package (draft_model): " in r.out
    # Each chain keyed on its own: the draft's load has its own key and record.
    assert r.stage("draft_load")["key"] != r.stage("load")["key"]
    rec = json.loads((store / "ac" / f"{r.stage('draft_load')['key']}.json").read_text())
    assert rec["role"] == "draft_model" and rec["ingredients"]["params"]["model.seed"] == 1

    # "why" per role: a new draft seed is compared with the draft's last build (seed 1), not the
    # target's (seed 0), and named by the key the user set; the target stays cached.
    again = run_pipeline(store, *TWO, "draft_model=tiny_llama", "draft_model.seed=2")
    assert again.rc == 0, again.out + again.err
    assert {again.status()[s] for s in TARGET} == {"cached"}
    assert again.stage("draft_load")["why"] == "draft_model.seed: 1 -> 2"
    assert (store / "index" / "draft_model" / "tiny_llama" / "draft_load").read_text() == again.stage("draft_load")["key"]
    assert (store / "index" / "model" / "tiny_llama" / "load").read_text() == r.stage("load")["key"]


def test_the_same_model_in_both_roles_builds_once(empty_store):
    r = run_pipeline(empty_store, *TWO, "draft_model=tiny_llama")
    assert r.rc == 0, r.out + r.err
    st = r.status()
    assert {st[s] for s in TARGET} == {"ran"}
    assert {st[s] for s in DRAFT} == {"cached"}, st
    for s in TARGET:
        assert r.stage(f"draft_{s}")["key"] == r.stage(s)["key"]
        assert r.stage(f"draft_{s}")["note"] == f"same key as {s}"
    assert "draft_export: cached (same key as export)" in r.out
    assert r.summary["packages"]["draft_model"] == r.summary["packages"]["model"]
    assert len(list((empty_store / "ac").glob("*.json"))) == len(TARGET)


def test_a_two_model_pipeline_without_a_draft_model_is_bad_input(store):
    before = store_snapshot(store)
    r = run_pipeline(store, *TWO)
    assert r.rc == 2, r.out + r.err
    assert r.err.strip().splitlines() == [
        "error: draft_model: not set; stage draft_load builds it; allowed: draft_model=<preset> "
        "(llama3, minilm_l6, smollm2_135m, smollm2_135m_draft, tiny_llama)"]
    assert store_snapshot(store) == before


def test_bad_draft_values_name_the_draft_keys(store):
    before = store_snapshot(store)
    r = run_pipeline(store, *TWO, "draft_model=tiny_llama", "draft_model.source=gguf", "draft_model.path=/nowhere/x.gguf")
    assert r.rc == 2, r.out + r.err
    assert r.err.startswith("error: draft_model.path: '/nowhere/x.gguf' does not exist; allowed: "), r.err
    r = run_pipeline(store, *TWO, "draft_model=nope")
    assert r.rc == 2 and r.err.startswith("error: draft_model: 'nope' is not a preset; allowed: llama3, "), r.err
    assert store_snapshot(store) == before
