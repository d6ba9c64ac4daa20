"""LoRA adapters as graph inputs (model.adapters): one package, adapters chosen per row at run time.

Random adapters made with peft on tiny_llama's architecture (and, in test_real_model.py, on
SmolLM2): greedy tokens equal the PEFT model's in PyTorch for each adapter (validation checks
every one), a batch mixing adapters row by row, a new adapter of the same rank and targets
re-running no export or compile, ``pipeline.infer adapter=<name>``, the AI 100 plan, bad input.
"""
from __future__ import annotations

import json

import pytest

from conftest import ROOT, copy_store, infer, run_pipeline, store_snapshot
from test_ai100 import ENV, STANDIN
from test_infer import DEVICE_ENV

torch = pytest.importorskip("torch")


def make_adapters(out, base_config: dict, specs, std: float = 0.5) -> dict[str, str]:
    """PEFT LoRA folders {name: path} for a model of ``base_config`` (an HF config dict), their B
    weights drawn with ``std``: large enough to change the greedy tokens."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(base_config)
    model_type = config.pop("model_type")
    folders = {}
    for i, (name, rank, targets) in enumerate(specs):
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config))
        peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=16, target_modules=targets,
                                                      init_lora_weights=False))
        for param_name, param in peft_model.named_parameters():
            if "lora_B" in param_name:
                torch.nn.init.normal_(param, std=std)
        peft_model.save_pretrained(out / name)
        folders[name] = str(out / name)
    return folders


def tiny_llama_config() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "conf" / "model" / "tiny_llama.yaml").read_text())["hf_config"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    out = tmp_path_factory.mktemp("adapters")
    return make_adapters(out, tiny_llama_config(), [("alpha", 4, ["q_proj", "v_proj"]), ("beta", 4, ["q_proj", "v_proj"]),
                                                    ("gamma", 2, ["q_proj"])])


def adapters_arg(adapters, names) -> str:
    return "model.adapters={" + ", ".join(f"{n}: {adapters[n]}" for n in names) + "}"


@pytest.fixture(scope="module")
def lora_store(adapters, tmp_path_factory):
    """tiny_llama with alpha and beta, batch 2, built once for the module."""
    store = tmp_path_factory.mktemp("lora") / "store"
    r = run_pipeline(store, adapters_arg(adapters, ["alpha", "beta"]), "compile.batch_size=2")
    assert r.rc == 0, r.out + r.err
    return store, r


def reference_tokens(store, run, name=None) -> list[int]:
    tree = store / "trees" / run.stage("reference")["digest"]
    return json.loads(((tree / "adapters" / name if name else tree) / "reference.json").read_text())["tokens"]


def test_every_adapter_validates_against_peft(lora_store):
    store, r = lora_store
    v = r.summary["validation"]
    assert v["passed"] and set(v["adapters"]) == {"alpha", "beta"}, v
    assert all(a["passed"] and a["tokens_compared"] == 32 and a["max_abs_logit_diff"] < 1e-3 for a in v["adapters"].values())
    assert "; adapter alpha: passed, 32 tokens" in r.out
    base, alpha, beta = (reference_tokens(store, r, n) for n in (None, "alpha", "beta"))
    assert base != alpha and alpha != beta  # the adapters change the tokens: the check means something
    package = store / "trees" / r.stage("package")["digest"]
    assert json.loads((package / "adapters.json").read_text())["slots"] == {"alpha": 1, "beta": 2}
    io = json.loads((store / "trees" / r.stage("export")["digest"] / "io.json").read_text())
    lora = [v for v in io["inputs"] if v["role"] == "lora_weight"]
    assert len(lora) == 2 * 2 * 2 and lora[0]["shape"] == [9, 64, 4]  # 2 layers x (q, v) x (A, B); 8 + 1 slots
    assert io["dims"]["lora_slots"] == 9 and io["dims"]["lora_rank"] == 4


def test_a_batch_mixes_adapters_row_by_row(lora_store):
    from runtime.generate import generate
    from runtime.sessions import open_session
    from runtime.tokenizer import load_tokenizer

    store, r = lora_store
    package = store / "trees" / r.stage("package")["digest"]
    session = open_session(package)
    ids = load_tokenizer(package)("The capital of France is").input_ids
    got = generate(session, [ids, ids], 32, adapters=[session.adapters["beta"], 0]).tokens
    assert got == [reference_tokens(store, r, "beta"), reference_tokens(store, r)]
    got = generate(session, [ids, ids], 32, adapters=[session.adapters["alpha"], session.adapters["beta"]]).tokens
    assert got == [reference_tokens(store, r, "alpha"), reference_tokens(store, r, "beta")]


def test_adding_an_adapter_of_the_same_shape_recompiles_nothing(lora_store, adapters, tmp_path):
    store = copy_store(lora_store[0], tmp_path / "store")
    r = run_pipeline(store, adapters_arg(adapters, ["alpha", "beta", "gamma"]), "compile.batch_size=2")
    assert r.rc == 0, r.out + r.err
    st = r.status()
    assert st["transform"] == st["export"] == st["rewrite"] == st["compile"] == "cached", st
    assert st["package"] == st["reference"] == st["validate"] == "ran", st
    assert "model.adapters.gamma: <unset> -> sha256:" in r.out
    assert r.summary["validation"]["adapters"]["gamma"]["passed"]

    run = infer(store, adapters_arg(adapters, ["alpha", "beta", "gamma"]), "compile.batch_size=2", "adapter=gamma",
                "prompt=The capital of France is", "generation_len=12")
    assert run.rc == 0, run.out + run.err
    assert run.exec_info["generated_ids"][0] == reference_tokens(store, r, "gamma")[:12]
    before = store_snapshot(store)
    bad = infer(store, adapters_arg(adapters, ["alpha", "beta", "gamma"]), "compile.batch_size=2", "adapter=delta",
                "prompt=x")
    assert bad.rc == 2 and bad.err.strip().splitlines()[-1] == "error: adapter: 'delta' is not allowed; allowed: alpha, beta, gamma"
    assert store_snapshot(store) == before


def test_ai100_package_takes_adapters_as_inputs(lora_store, adapters, tmp_path):
    store = copy_store(lora_store[0], tmp_path / "store")
    r = run_pipeline(store, adapters_arg(adapters, ["alpha", "beta"]), "hw=ai100_16c", f"hw.compiler={STANDIN}", env=ENV)
    assert r.rc == 0, r.out + r.err
    program = json.loads((store / "trees" / r.stage("compile")["digest"] / "qpc" / "programqpc.bin").read_text())
    assert "adapter_ids" in program["inputs"] and "lora_A.model.layers.0.self_attn.q_proj" in program["inputs"]
    v = r.summary["validation"]
    assert v["passed"] and v["exact_target"] == "onnx" and all(a["passed"] for a in v["adapters"].values()), v
    assert v["target"] == "onnx-fp16-mxfp6" and v["gate"]["passed"], v
    # On the device (the qaicrt stand-in runs the ONNX handed to the compiler): the session feeds
    # the package's LoRA weights, and adapter=beta gives beta's tokens.
    run = infer(store, adapters_arg(adapters, ["alpha", "beta"]), "hw=ai100_16c", f"hw.compiler={STANDIN}",
                "adapter=beta", "prompt=The capital of France is", "generation_len=12", env=DEVICE_ENV)
    assert run.rc == 0, run.out + run.err
    assert run.exec_info["generated_ids"][0] == reference_tokens(store, r, "beta")[:12]


def test_bad_adapters_are_refused_in_one_line(adapters, tmp_path):
    store = tmp_path / "store"
    cases = [
        (["compile.max_adapters=1", adapters_arg(adapters, ["alpha", "beta"])],
         "error: model.adapters: 2 adapters is not allowed; allowed: at most compile.max_adapters (1) per package"),
        (["model.adapters={alpha: " + str(tmp_path) + "}"],
         f"error: model.adapters.alpha: '{tmp_path}' is not allowed; allowed: a PEFT adapter folder with adapter_config.json"),
    ]
    for overrides, message in cases:
        r = run_pipeline(store, *overrides)
        assert r.rc == 2 and r.err.strip().splitlines()[-1].startswith(message), r.err
    assert store_snapshot(store) == set()
