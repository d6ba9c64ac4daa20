"""Speculative decoding: a draft model, prompt lookup and multi-projection heads give plain decoding's greedy tokens."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import copy_store, infer, store_snapshot

# Repetitive prompts give prompt lookup something to find; "Hi" is short and finds nothing at first.
PROMPTS = ["one two three one two three one two", "The cat sat on the mat. The cat sat on the", "Hi"]
N = 20
SMALL = ["compile.ctx_len=40", "compile.prefill_seq_len=8"]  # some sequences run out of context mid-step
LAYOUTS = {"batch1": [], "batch2": ["compile.batch_size=2"], "cb2": ["compile.full_batch_size=2"]}


@pytest.fixture(scope="module")
def packages(tmp_path_factory, built_store):
    """Build (in this process, through the API and one store) the packages a test names by overrides."""
    from pipeline.api import build, compose

    store = copy_store(built_store, tmp_path_factory.mktemp("spd") / "store")
    built: dict[tuple, dict] = {}

    def package(*overrides: str, roles=("model",)) -> dict[str, Path]:
        key = (overrides, roles)
        if key not in built:
            cfg = compose(["model=tiny_llama", f"store.root={store}", *overrides])
            result = build(cfg, echo=lambda _line: None, goals=("package",), roles=roles)
            assert result.ok, [(s.name, s.status) for s in result.stages]
            built[key] = result.packages
        return built[key]

    package.store = store
    return package


_tokenizers: dict = {}


def encode(package: Path, prompts: list[str]) -> list[list[int]]:
    from runtime.tokenizer import load_tokenizer

    if package not in _tokenizers:
        _tokenizers[package] = load_tokenizer(package)
    return [list(_tokenizers[package](p)["input_ids"]) for p in prompts]


def run(package: Path, prompts: list[list[int]], proposer=None, k=None, draft=None):
    from runtime.scheduler import Request, Scheduler
    from runtime.sessions.ort import OrtSession
    from runtime.speculative import SpeculativeScheduler

    session = OrtSession(package)
    requests = [Request(i, p, N) for i, p in enumerate(prompts)]
    if proposer is None:
        scheduler = Scheduler(session)
    else:
        scheduler = SpeculativeScheduler(session, proposer, num_speculative_tokens=k)
    result = scheduler.run(requests)
    return [r.ids for r in result.results], [r.finish_reason for r in result.results], scheduler


def proposer_for(scheme: str, packages, layout: list[str], target: Path, draft_seed: int = 0):
    from runtime.sessions.ort import OrtSession
    from runtime import speculative

    if scheme == "pld":
        return speculative.PromptLookup(3)
    if scheme == "multiproj":
        return speculative.Projections(OrtSession(target).program.signature)
    draft = packages(*SMALL, *layout, f"model.seed={draft_seed}")["model"]
    proposer = speculative.DraftModel(OrtSession(draft), "tiny_llama")
    proposer.check(OrtSession(target).program)
    return proposer


@pytest.mark.parametrize("attention", ["gqa", "scatter"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("scheme", ["pld", "draft", "multiproj"])
def test_each_scheme_gives_the_plain_greedy_tokens(packages, scheme, layout, attention):
    if attention == "scatter" and layout == "batch2":
        pytest.skip("batch2 on the AI 100 graph adds nothing the other two layouts do not check")
    hw = [f"hw.attention={attention}"]
    spd = [f"spd={scheme}", "spd.num_speculative_tokens=[1,3,5]"]
    target = packages(*SMALL, *LAYOUTS[layout], *hw, *spd)["model"]
    plain = packages(*SMALL, *LAYOUTS[layout], *hw)["model"]
    prompts = encode(plain, PROMPTS)
    expected, reasons, _ = run(plain, prompts)
    assert {"length"} <= set(reasons)
    seeds = [0, 1] if scheme == "draft" else [0]  # the target's own weights (all accepted), another draft (few)
    accepted_any = 0
    for k in (1, 3, 5):
        for seed in seeds:
            proposer = proposer_for(scheme, packages, [*LAYOUTS[layout], *hw], target, seed)
            ids, got_reasons, scheduler = run(target, prompts, proposer, k)
            assert ids == expected, (scheme, layout, attention, k, seed)
            assert got_reasons == reasons
            for i, steps in scheduler.accepted.items():
                assert sum(steps) == len(ids[i]) - 1  # every token but the first came from a target step
                assert all(1 <= n <= k + 1 for n in steps)
            accepted_any += sum(n > 1 for steps in scheduler.accepted.values() for n in steps)
            if scheme == "draft" and seed == 0:  # the draft is the target: every proposal is accepted
                assert all(n == k + 1 for steps in scheduler.accepted.values() for n in steps[:-1])
                assert scheduler.extra_metrics()["mean_num_accepted_tokens"] > 1.5
    if scheme != "multiproj":  # random heads propose noise
        assert accepted_any > 0


def test_prompt_lookup_finds_the_latest_full_continuation():
    from runtime.speculative import lookup

    assert lookup([1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2, 3], 3, 2) == [7, 8]   # latest match with 2 tokens after it
    assert lookup([5, 1, 2, 6, 1, 2], 3, 3) == [6, 1, 2]                   # falls back from 3-grams to 2-grams
    assert lookup([4, 4, 4], 3, 3) == [4]                                   # only a short continuation exists
    assert lookup([1, 2, 3], 3, 2) == []


def test_pld_on_the_cli_writes_the_speculative_fields(store):
    args = ["prompts=[\"one two three one two three one two\", \"Hi there\"]", f"generation_len={N}",
            "compile.full_batch_size=2"]
    plain = infer(store, *args)
    assert plain.rc == 0, plain.err
    r = infer(store, *args, "spd=pld", "spd.num_speculative_tokens=[1,3]")
    assert r.rc == 0, r.err
    info = r.exec_info
    assert info["generated_ids"] == plain.exec_info["generated_ids"]
    assert info["num_speculative_tokens"] == [1, 3]
    assert (info["target_model_name"], info["draft_model_name"], info["full_batch_size"]) == ("tiny_llama", None, 2)
    assert info["prefill_seq_len"] == 128 and info["ctx_len"] == 256
    m = info["perf_metrics"]
    steps = info["accepted_per_step"]
    assert [sum(s) for s in steps] == [len(ids) - 1 for ids in info["generated_ids"]]
    assert m["mean_num_accepted_tokens"] == pytest.approx(sum(map(sum, steps)) / sum(map(len, steps)))
    assert m["decode_iterations"] >= max(map(len, steps))
    assert 0 < m["decode_target_time_s"] <= m["decode_time_s"] and m["decode_draft_time_s"] >= 0
    assert "speculative (pld, K=[1, 3])" in r.out


def test_draft_on_the_cli_builds_the_draft_chain(store):
    r = infer(store, "prompt=\"My name is\"", "generation_len=12", "spd=draft", "draft_model=tiny_llama",
              "draft_model.num_layers=1")
    assert r.rc == 0, r.err
    names = [s["name"] for s in r.summary["stages"]]
    assert "draft_package" in names and "draft_validate" not in names and "validate" not in names
    assert r.exec_info["draft_model_name"] == "tiny_llama"
    assert r.exec_info["num_speculative_tokens"] == 3
    plain = infer(store, "prompt=\"My name is\"", "generation_len=12")
    assert r.exec_info["generated_ids"] == plain.exec_info["generated_ids"]


def test_multiproj_heads_from_a_folder(store, tmp_path):
    from passes.transforms import projections

    folder = tmp_path / "speculator"
    projections.save_heads(folder, projections.random_heads(64, 3, seed=7, num_layers=2))
    r = infer(store, "prompt=\"My name is\"", "generation_len=12", "spd=multiproj", f"spd.speculator={folder}")
    assert r.rc == 0, r.err
    plain = infer(store, "prompt=\"My name is\"", "generation_len=12")
    assert r.exec_info["generated_ids"] == plain.exec_info["generated_ids"]
    signature = json.loads((Path(r.summary["package"]) / "manifest.json").read_text())["program"]["signature"]
    assert signature["dims"]["projection_heads"] == 3
    # the heads are part of the transform's key: other heads (here: more of them) re-run it
    again = infer(store, "prompt=\"My name is\"", "generation_len=12", "spd=multiproj", f"spd.speculator={folder}")
    assert again.status()["transform"] == "cached"
    projections.save_heads(folder, projections.random_heads(64, 4, seed=7, num_layers=2))
    changed = infer(store, "prompt=\"My name is\"", "generation_len=12", "spd=multiproj", f"spd.speculator={folder}")
    assert changed.rc == 0 and changed.status()["transform"] == "ran"


@pytest.mark.parametrize("overrides, message", [
    (["spd=pld", "compile.prefill_seq_len=3"], "compile.prefill_seq_len: 3 is not allowed with spd.num_speculative_tokens 3; allowed: >= 4"),
    (["spd=pld", "compile.num_speculative_tokens=2"], "compile.num_speculative_tokens: 2 is not allowed with spd=pld; allowed: 3"),
    (["spd=pld", "spd.num_speculative_tokens=0"], "spd.num_speculative_tokens: 0 is not allowed"),
    (["spd=pld", "spd.max_ngram_size=0"], "spd.max_ngram_size: 0 is not allowed"),
    (["spd=draft"], "draft_model: not set"),
    (["spd=multiproj", "spd.speculator=/nonexistent"], "spd.speculator: '/nonexistent' is not allowed"),
    (["spd=pld", "sampling.temperature=0.7"], "sampling.temperature: 0.7 is not allowed with spd=pld"),
    (["model.num_layers=0"], "model.num_layers: 0 is not allowed"),
    (["model.num_layers=3"], "model.num_layers: 3 is not allowed; allowed: 1..2"),
])
def test_bad_speculative_input_is_one_line_and_exit_2(store, overrides, message):
    before = store_snapshot(store)
    r = infer(store, "prompt=Hi", "generation_len=4", *overrides)
    assert r.rc == 2, r.out + r.err
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], r.err
    assert store_snapshot(store) == before


def test_speculative_decoding_runs_on_ai100_through_qaicrt(store):
    """The loops over the AI 100 session (the stand-in qaicrt runs the package's ONNX view): the
    device picks the K+1 specialization by the buffers' shapes, and tokens equal the CPU's."""
    from test_infer import DEVICE_ENV, STANDIN_COMPILER

    args = ["prompts=[\"one two three one two three one two\", \"Hi\"]", "generation_len=12"]
    cpu = infer(store, *args)
    for scheme in (["spd=pld", "spd.num_speculative_tokens=[1,3]"], ["spd=draft", "draft_model=tiny_llama"]):
        device = infer(store, *args, "hw=ai100_16c", f"hw.compiler={STANDIN_COMPILER}", "compile.prefill_seq_len=8",
                       "compile.ctx_len=64", *scheme, env=DEVICE_ENV)
        assert device.rc == 0, device.out + device.err
        assert device.exec_info["generated_ids"] == cpu.exec_info["generated_ids"]
        assert device.exec_info["perf_metrics"]["decode_iterations"] > 0


@pytest.mark.parametrize("example", ["spd_prompt_lookup", "spd_draft_model", "spd_multi_projection"])
def test_the_examples_run(store, example):
    import subprocess
    import sys

    from conftest import ROOT

    p = subprocess.run([sys.executable, str(ROOT / "examples" / f"{example}.py"), "model=tiny_llama",
                        "draft_model=tiny_llama", "draft_model.num_layers=1", f"store.root={store}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "tokens per target step over" in p.stdout


def test_the_build_takes_spd_and_validates_the_speculative_target(store):
    from conftest import run_pipeline

    r = run_pipeline(store, "spd=multiproj", "spd.num_speculative_tokens=[2,4]")
    assert r.rc == 0, r.out + r.err
    assert r.summary["validation"]["passed"] is True
    program = json.loads((Path(r.summary["package"]) / "manifest.json").read_text())["program"]
    assert [s["name"] for s in program["specializations"]] == ["Prefill", "Decode", "Decode_K4"]
    assert program["signature"]["dims"]["projection_heads"] == 4
