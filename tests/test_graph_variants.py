"""Graph variants of the static-KV export (continuous batching, speculative target), checked
against the HF PyTorch model: the real transform and export functions, run by ONNX Runtime."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from passes.export import ExportParams, export  # noqa: E402
from passes.transforms.static_kv import StaticKvParams, build_wrapper  # noqa: E402

# conf/model/tiny_llama.yaml's architecture with a small vocabulary (fast).
HF_CONFIG = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
                 tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
CTX, FULL_BATCH, ATOL = 16, 4, 1e-4
PROMPTS = [[5, 17, 99, 3, 200, 41, 7], [88, 12, 250, 9, 64]]


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", **HF_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.set_attn_implementation("eager")
    return model.eval()


def hf_logits(model, tokens) -> np.ndarray:
    """[len(tokens), vocab]: the HF model's logits at every position of one sequence."""
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


@pytest.fixture(scope="module")
def exported(hf_model, tmp_path_factory):
    """export(**variant) -> (ORT session, io.json, folder), each variant exported once."""
    cache = {}

    def get(**variant):
        variant = {k: v for k, v in variant.items() if not (k == "dynamo" and not v)}
        key = tuple(sorted(variant.items()))
        if key not in cache:
            out = tmp_path_factory.mktemp("export")
            cache[key] = (*export_variant(hf_model, out, **variant), out)
        return cache[key]

    return get


def export_variant(model, out, full_batch_size=None, num_speculative_tokens=None, dynamo=False):
    """Export through the real passes (the TorchScript exporter, or the dynamo one); returns (ORT session, io.json)."""
    kv = StaticKvParams(full_batch_size=full_batch_size, num_speculative_tokens=num_speculative_tokens)
    wrapper = build_wrapper(model, continuous_batching=kv.full_batch_size is not None,
                            speculative=kv.num_speculative_tokens is not None)
    params = ExportParams(full_batch_size=full_batch_size, num_speculative_tokens=num_speculative_tokens,
                          dynamo=dynamo, opset=18 if dynamo else 17)
    export({"model": wrapper}, params, out)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    return session, json.loads((out / "io.json").read_text())


def random_past(io, kv_batch, seed=1) -> dict[str, np.ndarray]:
    """KV buffers full of noise: rows a step must not touch keep it, exactly."""
    rng = np.random.default_rng(seed)
    dims = io["dims"]
    shape = (kv_batch, dims["num_kv_heads"], CTX, dims["head_dim"])
    return {v["name"]: rng.standard_normal(shape).astype(np.float32)
            for v in io["inputs"] if v["name"].startswith("past_")}


def chunk(rows, first, seq_len):
    """input_ids/position_ids for tokens [first, first + seq_len) of each row, padded with -1."""
    ids = np.zeros((len(rows), seq_len), dtype=np.int64)
    pos = np.full((len(rows), seq_len), -1, dtype=np.int64)
    for r, row in enumerate(rows):
        part = row[first:first + seq_len]
        ids[r, :len(part)] = part
        pos[r, :len(part)] = np.arange(first, first + len(part))
    return ids, pos


def run(session, past, **feeds):
    """One step; returns (logits, retained KV by input name)."""
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, {**feeds, **past})))
    return values["logits"], {name: values[f"{name}_RetainedState"] for name in past}


def test_plain_export_inputs_unchanged(exported):
    session, io, _ = exported()
    past = [f"past_{kv}.{i}" for i in range(HF_CONFIG["num_hidden_layers"]) for kv in ("key", "value")]
    assert [i.name for i in session.get_inputs()] == ["input_ids", "position_ids", *past]
    assert [o.name for o in session.get_outputs()] == ["logits", *(f"{n}_RetainedState" for n in past)]
    shapes = {v["name"]: v["shape"] for v in io["inputs"] + io["outputs"]}
    assert shapes["logits"] == ["batch_size", 1, HF_CONFIG["vocab_size"]]
    assert shapes["past_key.0"] == ["batch_size", 2, "ctx_len", 16]
    assert "full_batch_size" not in json.dumps(io) and "num_logits_to_keep" not in json.dumps(io)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("variant, ops", [({}, {"CtxScatter", "CtxGather"}),
                                          ({"full_batch_size": FULL_BATCH}, {"CtxScatterCB", "CtxGatherCB"})])
def test_the_kv_cache_goes_through_the_compilers_custom_ops(exported, variant, ops, dynamo):
    """KV writes and reads of the AI 100 graph: com.qualcomm.cloud ops, defined as model-local functions
    (ONNX Runtime runs their bodies); no ScatterElements write-back, no whole-row KV copies. The dynamo
    exporter inlines functions: the export pass gives its calls their definitions back."""
    import onnx

    _, _, out = exported(**variant, dynamo=dynamo)
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert {(f.domain, f.name) for f in model.functions} == {("com.qualcomm.cloud", name) for name in ops}
    calls = [n.op_type for n in model.graph.node if n.domain == "com.qualcomm.cloud"]
    assert sorted(set(calls)) == sorted(ops) and len(calls) == 2 * 2 * HF_CONFIG["num_hidden_layers"]
    assert not {"ScatterElements", "ScatterND", "GatherND"} & {n.op_type for n in model.graph.node}


def test_continuous_batching_rows(hf_model, exported):
    session, io, _ = exported(full_batch_size=FULL_BATCH)
    shapes = {v["name"]: v["shape"] for v in io["inputs"] + io["outputs"]}
    assert shapes["batch_index"] == ["batch_size", 1]
    assert shapes["past_value.1"][0] == shapes["past_value.1_RetainedState"][0] == "full_batch_size"
    assert shapes["input_ids"] == ["batch_size", "seq_len"]
    start = random_past(io, FULL_BATCH)
    past = dict(start)
    # Prefill each prompt alone (batch 1) into its own row, in chunks of 4.
    rows = {0: 3, 1: 1}
    first_logits = {}
    for p, prompt in enumerate(PROMPTS):
        for first in range(0, len(prompt), 4):
            ids, pos = chunk([prompt], first, 4)
            logits, past = run(session, past, input_ids=ids, position_ids=pos,
                               batch_index=np.array([[rows[p]]], dtype=np.int64))
        first_logits[p] = logits[0, -1]
    # Then one decode step over both rows, in the other order.
    order = [1, 0]
    nxt = [int(first_logits[p].argmax()) for p in order]
    logits, past = run(session, past, input_ids=np.array(nxt, dtype=np.int64)[:, None],
                       position_ids=np.array([[len(PROMPTS[p])] for p in order], dtype=np.int64),
                       batch_index=np.array([[rows[p]] for p in order], dtype=np.int64))
    for i, p in enumerate(order):
        ref = hf_logits(hf_model, PROMPTS[p] + [nxt[i]])
        np.testing.assert_allclose(first_logits[p], ref[-2], atol=ATOL)
        np.testing.assert_allclose(logits[i, -1], ref[-1], atol=ATOL)
    for name in past:  # rows 0 and 2 were never addressed
        assert past[name].shape[0] == FULL_BATCH
        np.testing.assert_array_equal(past[name][[0, 2]], start[name][[0, 2]])
        assert not np.array_equal(past[name][[1, 3]], start[name][[1, 3]])


def test_speculative_logits_of_last_positions(hf_model, exported):
    k = 3
    session, io, _ = exported(num_speculative_tokens=k)
    shapes = {v["name"]: v["shape"] for v in io["inputs"] + io["outputs"]}
    assert shapes["num_logits_to_keep"] == ["num_logits_to_keep", 1]
    assert shapes["logits"] == ["batch_size", "num_logits_to_keep", HF_CONFIG["vocab_size"]]
    past = random_past(io, len(PROMPTS))
    ids, pos = chunk(PROMPTS, 0, 8)  # one chunk, rows of 7 and 5 tokens, padded
    logits, _ = run(session, past, input_ids=ids, position_ids=pos,
                    num_logits_to_keep=np.zeros((k + 1, 1), dtype=np.int64))
    assert logits.shape == (len(PROMPTS), k + 1, HF_CONFIG["vocab_size"])
    for r, prompt in enumerate(PROMPTS):
        np.testing.assert_allclose(logits[r], hf_logits(hf_model, prompt)[-(k + 1):], atol=ATOL)
    # The prefill form: one kept position is the last valid one.
    logits, _ = run(session, past, input_ids=ids, position_ids=pos,
                    num_logits_to_keep=np.zeros((1, 1), dtype=np.int64))
    for r, prompt in enumerate(PROMPTS):
        np.testing.assert_allclose(logits[r, 0], hf_logits(hf_model, prompt)[-1], atol=ATOL)


def test_continuous_batching_with_speculative(hf_model, exported):
    k = 2  # the graph is the same for any K (a list of K included)
    session, io, _ = exported(full_batch_size=FULL_BATCH, num_speculative_tokens=(1, k))
    names = [i.name for i in session.get_inputs()]
    assert names[-2:] == ["batch_index", "num_logits_to_keep"]
    start = random_past(io, FULL_BATCH)
    prompt, row = PROMPTS[0], 2
    ids, pos = chunk([prompt], 0, 8)
    logits, past = run(session, start, input_ids=ids, position_ids=pos, batch_index=np.array([[row]]),
                       num_logits_to_keep=np.zeros((1, 1), dtype=np.int64))
    np.testing.assert_allclose(logits[0, 0], hf_logits(hf_model, prompt)[-1], atol=ATOL)
    # Verification step: the last token plus K draft tokens, K + 1 logits back.
    draft = [int(logits[0, 0].argmax()), 77, 140]
    n = len(prompt)
    logits, past = run(session, past, input_ids=np.array([draft], dtype=np.int64),
                       position_ids=np.arange(n, n + k + 1, dtype=np.int64)[None, :],
                       batch_index=np.array([[row]]), num_logits_to_keep=np.zeros((k + 1, 1), dtype=np.int64))
    np.testing.assert_allclose(logits[0], hf_logits(hf_model, prompt + draft)[-(k + 1):], atol=ATOL)
    for name in past:
        others = [r for r in range(FULL_BATCH) if r != row]
        np.testing.assert_array_equal(past[name][others], start[name][others])


# Compiled shapes as compile_ort writes them (AI100.md's specializations): continuous batching
# prefills one sequence (batch 1) and decodes full_batch_size rows; a speculative target decodes
# K + 1 tokens; plus the plain shapes (batch 2: prefill chunk, then 1 token) over variant graphs.
CB_SHAPES = [dict(batch_size=1, seq_len=4, full_batch_size=FULL_BATCH),
             dict(batch_size=FULL_BATCH, seq_len=1, full_batch_size=FULL_BATCH)]
SPEC_SHAPES = [dict(batch_size=2, seq_len=4, num_logits_to_keep=1), dict(batch_size=2, seq_len=3, num_logits_to_keep=3)]
BOTH_SHAPES = [{**CB_SHAPES[0], "num_logits_to_keep": 1},
               dict(batch_size=FULL_BATCH, seq_len=3, full_batch_size=FULL_BATCH, num_logits_to_keep=3)]
PLAIN_SHAPES = [dict(batch_size=2, seq_len=4), dict(batch_size=2, seq_len=1)]


@pytest.mark.parametrize("variant,shapes", [
    (dict(full_batch_size=FULL_BATCH), CB_SHAPES), (dict(num_speculative_tokens=2), SPEC_SHAPES),
    (dict(full_batch_size=FULL_BATCH, num_speculative_tokens=2), BOTH_SHAPES),
    (dict(full_batch_size=FULL_BATCH), PLAIN_SHAPES), (dict(num_speculative_tokens=2), PLAIN_SHAPES),
], ids=["cb", "spec", "cb+spec", "cb-plain-shapes", "spec-plain-shapes"])
def test_runtime_greedy_on_variants(hf_model, exported, tmp_path, variant, shapes):
    """runtime.generate feeds the variant inputs itself and matches HF's greedy tokens."""
    from runtime import package_format as fmt
    from runtime.generate import generate
    from runtime.sessions.ort import OrtSession

    _, io, folder = exported(**variant)
    specs = []
    for i, shape in enumerate(shapes):  # prefill first; a decode of K+1 tokens is a speculative step
        symbols = {"ctx_len": CTX, **shape}
        if i == 0:
            specs.append(fmt.Specialization("Prefill", (fmt.PREFILL,), symbols))
        elif shape.get("num_logits_to_keep", 1) > 1:
            specs.append(fmt.Specialization(f"Decode_K{shape['seq_len'] - 1}", (fmt.DECODE_K,), symbols, shape["seq_len"] - 1))
        else:
            specs.append(fmt.Specialization("Decode", (fmt.DECODE,), symbols))
    program = fmt.Program(fmt.ONNXRUNTIME, fmt.Signature.from_json(io), tuple(specs),
                          graphs={s.name: str(folder / "model.onnx") for s in specs}, options={"intra_op_num_threads": 1})
    session = OrtSession(tmp_path, num_threads=1, program=program)
    kv_batch = shapes[0].get("full_batch_size", shapes[0]["batch_size"])
    assert session.new_kv()["past_key.0"].shape[0] == kv_batch
    prompts = PROMPTS[:specs[0].batch_size]
    new = 4
    result = generate(session, prompts, max_new_tokens=new)
    for r, prompt in enumerate(prompts):
        seq = list(prompt)  # HF greedy, no EOS stop (the second prompt runs into EOS)
        for _ in range(new):
            seq.append(int(hf_logits(hf_model, seq)[-1].argmax()))
        assert result.tokens[r] == seq[len(prompt):]
        np.testing.assert_allclose(result.logits[r, -1], hf_logits(hf_model, seq[:-1])[-1], atol=ATOL)


def test_variant_params_key_on_switch_only():
    """The transform's and export's keys change when a variant is switched on, not with its size."""
    from pipeline.keys import canonical_params

    for cls in (StaticKvParams, ExportParams):
        keyed = [canonical_params(cls(full_batch_size=f, num_speculative_tokens=k), None)[0]
                 for f, k in [(None, None), (4, 3), (8, (1, 3))]]
        assert keyed[1] == keyed[2] != keyed[0]
        assert keyed[1]["compile.full_batch_size"] is True and keyed[0]["compile.num_speculative_tokens"] is False
