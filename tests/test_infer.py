"""Generation with a built package: `python -m pipeline.infer`, batching, continuous batching, sampling, metrics."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import ROOT, infer, run_pipeline, store_snapshot

PROMPTS = ["My name is", "The capital of France is a city where", "Hi"]
FIVE = [*PROMPTS, "Once upon a time, in a land far away, there lived", "2 + 2 ="]
N = 12
STANDIN_COMPILER = ROOT / "tests" / "standin_qaic_compile.py"
STANDIN_QAICRT = ROOT / "tests" / "standin_qaicrt"
DEVICE_ENV = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
              "PYTHONPATH": str(STANDIN_QAICRT)}


def prompts_arg(prompts: list[str], key: str = "prompts") -> str:
    return f"{key}=[{', '.join(json.dumps(p) for p in prompts)}]"


@pytest.fixture(scope="module")
def hf_greedy(built_store):
    """HF transformers' own greedy `generate` on the tiny_llama checkpoint the store holds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load = (built_store / "index" / "model" / "tiny_llama" / "load").read_text()
    record = json.loads((built_store / "ac" / f"{load}.json").read_text())
    folder = built_store / "trees" / record["digest"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def generate(prompt: str, n: int) -> list[int]:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=n, do_sample=False)
        return out[0, ids.shape[1]:].tolist()

    return generate


def test_a_batch_of_prompts_of_different_lengths_gives_each_prompt_alone_and_hf_generate(store, hf_greedy):
    batch = infer(store, prompts_arg(PROMPTS), "compile.batch_size=3", f"generation_len={N}")
    assert batch.rc == 0, batch.out + batch.err
    alone = infer(store, prompts_arg(PROMPTS), f"generation_len={N}")  # batch size 1: one prompt a batch
    assert alone.rc == 0, alone.out + alone.err
    b, a = batch.exec_info, alone.exec_info
    assert (b["batch_size"], a["batch_size"]) == (3, 1)
    assert b["prompts"] == a["prompts"] == PROMPTS
    assert b["generated_ids"] == a["generated_ids"] == [hf_greedy(p, N) for p in PROMPTS]
    assert b["generated_texts"] == a["generated_texts"]
    assert set(b["perf_metrics"]) >= {"prefill_time_s", "decode_time_s", "decode_throughput_tok_s",
                                      "total_throughput_tok_s", "e2e_time_s"}
    # only what the package needs was built: no reference, no validation
    assert [s["name"] for s in batch.summary["stages"]] == ["load", "transform", "export", "rewrite", "compile", "quantize", "package"]
    assert "=== prompt 1 (" in batch.out and b["generated_texts"][1] in batch.out
    assert "TTFT (prefill)" in batch.out and f"exec info: {batch.run_dir / 'exec_info.json'}" in batch.out


def test_metrics_are_consistent(store):
    r = infer(store, prompts_arg(PROMPTS), "compile.batch_size=2", f"generation_len={N}")  # 2 batches: 2 + 1
    assert r.rc == 0, r.out + r.err
    m, ids = r.exec_info["perf_metrics"], r.exec_info["generated_ids"]
    decoded = sum(len(x) - 1 for x in ids)
    assert m["decode_throughput_tok_s"] * m["decode_time_s"] == pytest.approx(decoded, rel=1e-9)
    assert m["total_throughput_tok_s"] * m["e2e_time_s"] == pytest.approx(sum(map(len, ids)), rel=1e-9)
    assert m["e2e_time_s"] == pytest.approx(m["prefill_time_s"] + m["decode_time_s"])
    assert 0 < m["prefill_time_s"] < m["e2e_time_s"]


def test_continuous_batching_gives_the_serial_texts(store):
    # ctx_len 32: the long prompt (about 12 tokens) runs out of context first and frees its slot early
    args = [prompts_arg(FIVE), "compile.ctx_len=32", "compile.prefill_seq_len=8", "generation_len=24"]
    cb = infer(store, *args, "compile.full_batch_size=2")
    assert cb.rc == 0, cb.out + cb.err
    serial = infer(store, *args)
    assert serial.rc == 0, serial.out + serial.err
    assert cb.exec_info["full_batch_size"] == 2 and cb.exec_info["batch_size"] == 2
    assert cb.exec_info["generated_ids"] == serial.exec_info["generated_ids"]
    assert cb.exec_info["generated_texts"] == serial.exec_info["generated_texts"]
    lengths = [len(x) for x in cb.exec_info["generated_ids"]]
    assert len(set(lengths)) > 1  # the slots really freed at different times


def test_seeded_sampling_repeats_and_does_not_depend_on_batching(store):
    sampling = ["sampling.temperature=0.9", "sampling.top_k=40", "sampling.top_p=0.95", "sampling.repetition_penalty=1.2"]
    a = infer(store, prompts_arg(PROMPTS), f"generation_len={N}", *sampling, "sampling.seed=7")
    b = infer(store, prompts_arg(PROMPTS), f"generation_len={N}", *sampling, "sampling.seed=7", "compile.batch_size=3")
    c = infer(store, prompts_arg(PROMPTS), f"generation_len={N}", *sampling, "sampling.seed=8")
    greedy = infer(store, prompts_arg(PROMPTS), f"generation_len={N}")
    for r in (a, b, c, greedy):
        assert r.rc == 0, r.out + r.err
    assert a.exec_info["generated_ids"] == b.exec_info["generated_ids"]
    assert a.exec_info["generated_ids"] != c.exec_info["generated_ids"]
    assert a.exec_info["generated_ids"] != greedy.exec_info["generated_ids"]


def test_prompts_file_chat_and_stream(store, tmp_path):
    lines = tmp_path / "prompts.txt"
    lines.write_text("My name is\n\nHi\n")
    listed = tmp_path / "prompts.json"
    listed.write_text(json.dumps(["My name is", "two\nlines"]))
    r = infer(store, f"prompts_file={lines}", "generation_len=4")
    assert r.rc == 0 and r.exec_info["prompts"] == ["My name is", "Hi"], r.out + r.err
    r = infer(store, f"prompts_file={listed}", "generation_len=4")
    assert r.rc == 0 and r.exec_info["prompts"] == ["My name is", "two\nlines"], r.out + r.err
    plain = infer(store, "prompt=Hello", "generation_len=4")
    chat = infer(store, "prompt=Hello", "generation_len=4", "chat=true")
    assert chat.rc == 0 and chat.exec_info["prompt_lengths"][0] > plain.exec_info["prompt_lengths"][0] + 5
    streamed = infer(store, "prompt=Hello", "generation_len=8", "stream=true")
    assert streamed.rc == 0, streamed.out + streamed.err
    text = streamed.exec_info["generated_texts"][0]
    assert streamed.out.startswith(text + "\n"), streamed.out  # printed token by token before the summary


BAD = [
    ([], "prompt: not set; allowed: exactly one of prompt=<text>, prompts=[<text>, ...] or prompts_file=<path>"),
    (["prompt=a", "prompts=[b]"], "prompt: set with prompt, prompts; allowed: exactly one of"),
    (["prompts_file=/nowhere/p.txt"], "prompts_file: '/nowhere/p.txt' cannot be read"),
    (["prompt=a", "sampling.top_p=0"], "sampling.top_p: 0.0 is not allowed; allowed: 0 < top_p <= 1"),
    (["prompt=a", "sampling.temperature=-1"], "sampling.temperature: -1.0 is not allowed"),
    (["prompt=a", "sampling.temperature=5e-324"], "sampling.temperature: 5e-324 is not allowed; allowed: 0 (greedy)"),
    (["prompt=a", "sampling.seed=-1"], "sampling.seed: -1 is not allowed; allowed: an integer from 0"),
    (["prompt=a", "generation_len=0"], "generation_len: 0 is not allowed; allowed: an integer >= 1, or null"),
    (["prompt=a", "nope=1"], "nope: not a config key"),
    (["prompt=" + " ".join(["word"] * 40), "compile.ctx_len=16", "compile.prefill_seq_len=8"],
     "prompt 0: 40 tokens is not allowed; allowed: at most 15 tokens (compile.ctx_len 16 - 1)"),
]


@pytest.mark.parametrize("overrides,expected", BAD, ids=[" ".join(o) or "none" for o, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(store, overrides, expected):
    before = store_snapshot(store)
    r = infer(store, *overrides)
    assert r.rc == 2, r.out + r.err
    errors = [line for line in r.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], r.err
    assert "Traceback" not in r.err
    if "ctx_len" not in " ".join(overrides):  # that one is found after building the package
        assert store_snapshot(store) == before


HOSTILE_FILES = {  # name: (content, the error line's start after "prompts_file: '<path>' ")
    "binary.txt": (bytes(range(256)) * 4, "is not UTF-8 (byte 0x80 at offset 128)"),
    "nul.txt": (b"one\ntwo\x00three\n", "holds a NUL byte at offset 7 (a binary file?)"),
    "latin1.json": ('["caf\u00e9"]'.encode("latin-1"), "is not UTF-8 (byte 0xe9 at offset 5)"),
    "deep.json": (b"[" * 200_000 + b"]" * 200_000, "nests too deeply"),
    "object.json": (b'{"prompt": "a"}', "holds a dict"),
    "mixed.json": (b'["a", 7]', None),
    "huge.txt": (b"word " * 10_000_000, None),
}


@pytest.mark.parametrize("name", HOSTILE_FILES)
def test_a_hostile_prompts_file_is_one_line_and_exit_2(store, tmp_path, name):
    content, says = HOSTILE_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    r = infer(store, f"prompts_file={path}")
    assert r.rc == 2 and "Traceback" not in r.err, r.err[-2000:]
    [error] = [line for line in r.err.splitlines() if line.startswith("error: ")]
    if name == "mixed.json":
        assert error == "error: prompts_file: entry 1, 7, is not allowed; allowed: one or more non-empty strings"
    elif name == "huge.txt":  # refused by its bytes, before tokenizing 50 MB
        assert error.startswith("error: prompts_file: 50000000 bytes is not allowed; allowed: at most "), error
    else:
        assert error == f"error: prompts_file: {str(path)!r} {says}; allowed: " + (
            "a .json list of strings" if name.endswith(".json") else "UTF-8 text, one prompt a line"), error
    path.unlink()


def test_the_same_runs_on_ai100_through_qaicrt(store):
    cpu = infer(store, prompts_arg(PROMPTS), f"generation_len={N}")
    device = infer(store, prompts_arg(PROMPTS), f"generation_len={N}", "hw=ai100_16c", f"hw.compiler={STANDIN_COMPILER}",
                   env=DEVICE_ENV)
    assert device.rc == 0, device.out + device.err
    assert device.exec_info["generated_ids"] == cpu.exec_info["generated_ids"]
    cb = infer(store, prompts_arg(FIVE), f"generation_len={N}", "hw=ai100_16c", f"hw.compiler={STANDIN_COMPILER}",
               "compile.full_batch_size=2", env=DEVICE_ENV)
    serial = infer(store, prompts_arg(FIVE), f"generation_len={N}")
    assert cb.rc == 0, cb.out + cb.err
    assert cb.exec_info["generated_ids"] == serial.exec_info["generated_ids"]
    no_device = infer(store, "prompt=Hi", "hw=ai100_16c", f"hw.compiler={STANDIN_COMPILER}",
                      env={"PATH": DEVICE_ENV["PATH"]})
    assert no_device.rc == 2 and "cannot import qaicrt" in no_device.err, no_device.err


def test_the_benchmark_stage_is_off_by_default_and_keyed(store):
    off = run_pipeline(store)
    assert "benchmark" not in off.status()
    on = run_pipeline(store, "pipeline.benchmark=true", "benchmark.repeats=1", "benchmark.generation_len=6")
    assert on.rc == 0, on.out + on.err
    assert on.status()["benchmark"] == "ran" and on.status()["validate"] == "cached"
    b = on.summary["benchmark"]
    assert b["target"] == "package" and b["prompts"] == 4
    assert b["perf_metrics"]["decode_throughput_tok_s"] > 0 and b["perf_metrics"]["decoded_tokens"] == 4 * 5
    again = run_pipeline(store, "pipeline.benchmark=true", "benchmark.repeats=1", "benchmark.generation_len=6")
    assert again.status()["benchmark"] == "cached" and again.summary["benchmark"] == b


def test_scheduler_stops_at_eos_and_refills_a_free_slot_at_once(store):
    """The scheduler itself, on a continuous-batching package: EOS ends a sequence, and its slot
    takes the next prompt before the next decode step."""
    r = run_pipeline(store, "compile.full_batch_size=2", "~pipeline.stages.reference", "~pipeline.stages.validate")
    assert r.rc == 0, r.out + r.err
    from runtime import package_format as fmt
    from runtime.scheduler import Request, Scheduler
    from runtime.sessions.ort import OrtSession

    class Recording(OrtSession):
        def run(self, spec, feeds, kv_rows=None):
            rows = range(len(feeds["input_ids"])) if kv_rows is None else kv_rows.reshape(-1).tolist()
            self.log.append((spec.name, list(rows), feeds["position_ids"][:, 0].tolist()))
            return super().run(spec, feeds, kv_rows)

    session = Recording(r.summary["package"])
    session.log = []
    requests = [Request(0, [5, 6, 7], 6), Request(1, [8, 9], 6), Request(2, [10, 11, 12, 13], 6)]
    greedy = Scheduler(session).run(requests).results
    eos = greedy[0].ids[2]  # the third token request 0 chooses
    session.log = []
    run = Scheduler(session, eos_ids=[eos]).run(requests)
    first = run.results[0]
    assert first.ids == greedy[0].ids[:3] and first.finish_reason == "stop"
    assert run.results[2].ids == greedy[2].ids[:len(run.results[2].ids)]
    prefills = [i for i, (name, rows, _) in enumerate(session.log) if name == "Prefill"]
    assert [session.log[i][1] for i in prefills] == [[0], [1], [0]]  # request 2 took slot 0 when request 0 ended
    # ... right after the decode step in which request 0 chose its EOS, with request 1 still running
    decodes_before = sum(1 for name, _, _ in session.log[:prefills[2]] if name == "Decode")
    assert decodes_before == 2 and run.results[1].finish_reason == "length"
    assert fmt.read_program(r.summary["package"]).kv_batch_size == 2


def test_a_speculative_target_package_decodes_the_same_greedy_tokens(store):
    """A package compiled to score K+1 tokens per step (no plain decode shape) still decodes one
    token at a time with padding, and gives the plain package's tokens (both KV conventions)."""
    plain = infer(store, prompts_arg(PROMPTS), f"generation_len={N}", "compile.batch_size=3")
    for attention in ("gqa", "scatter"):
        spec = infer(store, prompts_arg(PROMPTS), f"generation_len={N}", "compile.batch_size=3",
                     "compile.num_speculative_tokens=[2,3]", f"hw.attention={attention}")
        assert spec.rc == 0, spec.out + spec.err
        assert spec.exec_info["generated_ids"] == plain.exec_info["generated_ids"], attention
