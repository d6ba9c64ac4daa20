"""``python -m pipeline.serve`` in a real subprocess, driven by the official ``openai`` client over localhost."""
from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, free_port, run_pipeline

MODEL = "tiny_llama"


class Server:
    def __init__(self, store: Path, *overrides: str, model: str = MODEL, entry_log: Path | None = None,
                 env: dict | None = None):
        self.port = free_port(set())
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = entry_log or store.parent / f"serve-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.serve", f"model={model}", f"store.root={store}", f"serve.port={self.port}",
             f"hydra.run.dir={store.parent / f'serve-run-{self.port}'}", *overrides],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log.open("w"), env={**os.environ, **(env or {})})
        deadline = time.time() + 300
        while not self.health():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.time() < deadline, self.log.read_text()
            time.sleep(0.3)

    def health(self) -> dict | None:
        import httpx2 as httpx

        try:
            r = httpx.get(self.url + "/health", timeout=5)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=120)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def package(self) -> Path:
        """The package folder the server printed it serves."""
        line = next(line for line in self.log.read_text().splitlines() if line.startswith("serving "))
        return Path(line.split(" from ", 1)[1].rsplit(" on http", 1)[0])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("serve") / "store"
    s = Server(store, "compile.ctx_len=128")
    yield s
    assert s.stop() == 0, s.log.read_text()[-3000:]


def complete(client, prompt: str = "My name is", **kw) -> str:
    return client.completions.create(model=MODEL, prompt=prompt, **kw).choices[0].text


def test_completions_streaming_and_chat_agree_with_the_package(server):
    c = server.client()
    assert [m.id for m in c.models.list()] == [MODEL]
    assert server.health()["slots"] == 4  # compile.full_batch_size: 4 for serving
    r = c.completions.create(model=MODEL, prompt="My name is", max_tokens=24)
    text = r.choices[0].text
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 24 and r.usage.prompt_tokens == 3
    # the same tokens as the package run by pipeline.infer (greedy)
    store = Path(server.proc.args[4].split("=", 1)[1])
    ran = run_pipeline(store, "compile.ctx_len=128", "compile.full_batch_size=4", "prompt=My name is",
                       "generation_len=24", entry="pipeline.infer")
    assert ran.rc == 0 and ran.exec_info["generated_texts"] == [text], ran.err
    stream = c.completions.create(model=MODEL, prompt="My name is", max_tokens=24, stream=True)
    chunks = [ch.choices[0] for ch in stream]
    assert "".join(ch.text for ch in chunks) == text and chunks[-1].finish_reason == "length" and len(chunks) > 5
    # several prompts: one choice each
    r = c.completions.create(model=MODEL, prompt=["My name is", "The capital of France is"], max_tokens=24)
    assert [ch.index for ch in r.choices] == [0, 1] and r.choices[0].text == text

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a compiler?"}]
    chat = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=20)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].finish_reason == "length"
    streamed = "".join(x.choices[0].delta.content or "" for x in
                       c.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, stream=True))
    assert streamed == chat.choices[0].message.content


def test_stop_strings_sampling_and_limits(server):
    c = server.client()
    text = complete(c, max_tokens=24)
    stop = text[6:10]
    r = c.completions.create(model=MODEL, prompt="My name is", max_tokens=24, stop=[stop, "never-there"])
    assert r.choices[0].text == text[:text.index(stop)] and r.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].text for ch in
                       c.completions.create(model=MODEL, prompt="My name is", max_tokens=24, stop=stop, stream=True))
    assert streamed == r.choices[0].text
    sampled = [complete(c, max_tokens=16, temperature=0.9, top_p=0.9, seed=7) for _ in range(2)]
    assert sampled[0] == sampled[1] != complete(c, max_tokens=16)
    assert complete(c, max_tokens=16, temperature=0.9, seed=8) != sampled[0]
    long = c.completions.create(model=MODEL, prompt="My name is", max_tokens=500)
    # the context holds the prompt and every new token but the last (which needs no KV row)
    assert long.choices[0].finish_reason == "length" and long.usage.completion_tokens == 128 - 3 + 1


def test_concurrent_clients_share_the_slots(server):
    """16 clients at once get the text each gets alone, and fill every slot while they run (the
    throughput this buys is bench/serving.py's to show: no timing here)."""
    c = server.client()
    prompts = [f"Request number {i} says" for i in range(16)]
    one = lambda p: complete(c, p, max_tokens=64)  # noqa: E731
    serial = [one(p) for p in prompts]
    seen, done = [], threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(server.health() or {})
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(one, prompts))
    done.set()
    watcher.join()
    assert together == serial
    assert max(h.get("running", 0) for h in seen) == 4 and max(h.get("waiting", 0) for h in seen) > 0, seen[-5:]


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server):
    import httpx2 as httpx
    import openai

    c = server.client()
    cases = [
        (dict(model="nope", prompt="x"), openai.NotFoundError, "model: 'nope' does not exist"),
        (dict(model=MODEL, prompt="x", max_tokens=-1), openai.BadRequestError, "max_tokens: -1 is not allowed"),
        (dict(model=MODEL, prompt="word " * 300), openai.BadRequestError, "prompt: 301 tokens is not allowed"),
        (dict(model=MODEL, prompt="x", n=2), openai.BadRequestError, "n: 2 is not allowed"),
        (dict(model=MODEL, prompt="x", temperature=-0.5), openai.BadRequestError, "temperature: -0.5 is not allowed"),
        # checked per request: these used to fail inside the shared engine, with every request in flight
        (dict(model=MODEL, prompt="x", temperature=5e-324), openai.BadRequestError, "temperature: 5e-324 is not allowed"),
        (dict(model=MODEL, prompt="x", seed=-1), openai.BadRequestError, "seed: -1 is not allowed"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error) as e:
            c.completions.create(**kwargs)
        assert e.value.body["message"].startswith(message), e.value.body
    with pytest.raises(openai.BadRequestError) as e:
        c.embeddings.create(model=MODEL, input="x")
    assert "is a causal_lm package" in e.value.body["message"]
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("the body is not valid JSON")
    chat = "/v1/chat/completions"
    raw = [  # (route, body, param, message start): each used to be a 500, or to tokenize megabytes on the event loop
        (chat, {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages.0.content",
         "messages.0.content: [{'type': 'text', 'text': 5}] is not allowed; allowed: text parts whose text is a string"),
        (chat, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages.0.content", "messages.0.content: [{'type': 'image_url'"),
        (chat, {"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages", "messages: holds '\\ud800'"),
        ("/v1/completions", {"prompt": "a\ud800b"}, "prompt", "prompt: holds '\\ud800' at character 1"),
        ("/v1/completions", {"prompt": "word " * 400_000}, "prompt", "prompt: 2000000 bytes is not allowed; allowed: at most"),
        ("/v1/completions", {"prompt": ["fine", "x" * 2_000_000]}, "prompt", "prompt[1]: 2000000 bytes is not allowed"),
        ("/v1/completions", {"prompt": [7] * 100_000}, "prompt", "prompt: 100000 tokens is not allowed"),
    ]
    for route, body, param, start in raw:
        r = httpx.post(server.url + route, content=json.dumps({"model": MODEL, **body}).encode(),  # \ud800 escaped
                       headers={"content-type": "application/json"}, timeout=60)
        error = r.json()["error"]
        assert r.status_code == 400 and error["param"] == param and error["message"].startswith(start), (body, error)
        assert len(error["message"]) < 300
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert httpx.get(server.url + "/v1/nowhere").status_code == 404
    assert complete(c, max_tokens=4) and server.health()["status"] == "ok"


def test_64_concurrent_clients_with_malformed_requests_among_them(server):
    """Every good request gets its single-request text, every bad one a 4xx, and the server goes on."""
    import httpx2 as httpx

    want = complete(server.client(), "Hello there", max_tokens=8)
    bad_bodies = [b"{", b"[]", b'{"model": "tiny_llama"}', b'{"model": "tiny_llama", "prompt": 5}',
                  b'{"model": "tiny_llama", "prompt": "x", "max_tokens": "many"}', "{\"prompt\": \"\u00e9\"}".encode()]

    def one(i: int) -> tuple[int, str]:
        if i % 4 == 3:
            r = httpx.post(server.url + "/v1/completions", content=bad_bodies[i % len(bad_bodies)],
                           headers={"content-type": "application/json"}, timeout=120)
            return r.status_code, r.json()["error"]["message"]
        r = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "Hello there", "max_tokens": 8,
                                                              "stream": i % 2 == 0}, timeout=120)
        if i % 2 == 0:
            pieces = [json.loads(line[6:])["choices"][0]["text"] for line in r.text.splitlines()
                      if line.startswith("data: {")]
            return r.status_code, "".join(pieces)
        return r.status_code, r.json()["choices"][0]["text"]

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    for i, (status, text) in enumerate(results):
        if i % 4 == 3:
            assert 400 <= status < 500 and text and "\n" not in text, (i, status, text)
        else:
            assert status == 200 and text == want, (i, status, text)
    assert server.health()["running"] == 0 and complete(server.client(), "Hello there", max_tokens=8) == want


def test_a_request_failing_inside_the_engine_fails_alone(server):
    """Requests that get past every check and still fail in the engine (its sampling, its client) fail
    alone: the others in flight, sharing decode steps with them, finish with their tokens of a run alone."""
    import queue

    from runtime.sampling import SamplingParams
    from runtime.server.engine import Engine, Job
    from runtime.sessions import open_session
    from runtime.textgen import eos_ids
    from runtime.tokenizer import load_tokenizer

    package = server.package()
    tokenizer = load_tokenizer(package)
    engine = Engine(open_session(package), tokenizer, eos_ids(tokenizer, package))
    prompt = tokenizer("My name is")["input_ids"]

    def run(jobs: list[tuple[SamplingParams, bool]]) -> list[tuple[str, object]]:
        events = [queue.Queue() for _ in jobs]

        def emitter(i: int, breaks: bool):
            def emit(kind, data):
                if breaks and kind == "text":
                    raise ConnectionError("the client's loop is gone")
                events[i].put((kind, data))
            return emit

        for i, (sampling, breaks) in enumerate(jobs):  # straight into the inbox: past submit()'s checks
            engine.inbox.put(Job(prompt, 40, emitter(i, breaks), sampling))
        ends = []
        for q in events:
            while (event := q.get(timeout=120))[0] == "text":
                pass
            ends.append(event)
        return ends

    greedy, seeded = SamplingParams(), SamplingParams(temperature=0.8, seed=3)
    alone = [run([(p, False)])[0][1]["ids"] for p in (greedy, seeded)]
    ends = run([(greedy, False), (SamplingParams(temperature=5e-324), False), (seeded, False), (greedy, True)])
    try:
        assert [kind for kind, _ in ends] == ["done", "error", "done", "error"], ends
        assert [ends[0][1]["ids"], ends[2][1]["ids"]] == alone
        assert "ConnectionError" in ends[3][1]
        assert engine.load() == {"running": 0, "waiting": 0} and engine.stats()["requests"]["failed"] == 2
        assert run([(greedy, False)])[0][1]["ids"] == alone[0]  # and it goes on serving
    finally:
        engine.close()


def test_signals_stop_the_server_with_exit_0_and_its_summary(server, tmp_path):
    store = Path(server.package()).parents[1]  # <store>/trees/<digest>: the module's built store
    for sig in (signal.SIGTERM, signal.SIGINT):
        s = Server(store, "compile.ctx_len=128", entry_log=tmp_path / f"serve-{sig.name}.log")
        assert complete(s.client(), max_tokens=3)
        assert s.stop(sig) == 0
        log = s.log.read_text()
        assert "Traceback" not in log and f"stopped by {sig.name}: served 1 requests (1 length, 0 failed)" in log, log[-2000:]
        summary = json.loads((store.parent / f"serve-run-{s.port}" / "summary.json").read_text())
        assert summary["exit_code"] == 0 and summary["stopped_by"] == sig.name
        assert summary["served"]["requests"] == {"length": 1, "failed": 0} and summary["served"]["completion_tokens"] == 3


def test_a_client_gone_mid_stream_frees_its_slot(server):
    import httpx2 as httpx

    body = {"model": MODEL, "prompt": "My name is", "max_tokens": 120, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        for i, _line in enumerate(r.iter_lines()):
            if i >= 4:
                break
    deadline = time.time() + 30
    while server.health()["running"] and time.time() < deadline:
        time.sleep(0.1)
    assert server.health()["running"] == 0


def test_an_embedding_package_serves_embeddings(tmp_path):
    from runtime.embed import Embedder

    store = tmp_path / "store"
    s = Server(store, "pipeline=embedding", "compile.seq_len=[16,64]", "compile.batch_size=4", model="minilm_l6")
    try:
        texts = ["A first sentence.", "A second one, about serving embeddings over HTTP."]
        c = s.client()
        got = c.embeddings.create(model="minilm_l6", input=texts)  # the client asks for base64
        floats = c.embeddings.create(model="minilm_l6", input=texts, encoding_format="float")
        vectors = np.array([d.embedding for d in got.data], dtype=np.float32)
        assert vectors.shape == (2, 384) and np.allclose(vectors, [d.embedding for d in floats.data], atol=1e-6)
        package = next(p.parent for p in (store / "trees").glob("*/manifest.json")
                       if json.loads(p.read_text())["kind"] == "embedding")
        want = Embedder(package).embed(texts).embeddings
        assert np.allclose(vectors, want, atol=1e-5) and got.usage.prompt_tokens > 0
    finally:
        s.stop()
    assert "serving 'minilm_l6' (embedding" in s.log.read_text()
    # a package folder served as it is, with no build
    s = Server(tmp_path / "other-store", f"serve.package={package}", model="minilm_l6")
    try:
        again = s.client().embeddings.create(model="minilm_l6", input=texts, encoding_format="float")
        assert np.allclose([d.embedding for d in again.data], vectors, atol=1e-6)
    finally:
        s.stop()
    assert not (tmp_path / "other-store" / "trees").exists()
    r = run_pipeline(tmp_path / "other-store", f"serve.package={tmp_path}", entry="pipeline.serve")
    assert r.rc == 2 and r.err.strip().splitlines()[-1].startswith(f"error: serve.package: '{tmp_path}' is not allowed")


def test_an_ai100_package_is_served_through_qaicrt(server, tmp_path):
    """The AI 100 graph compiled by the compiler stand-in, run by the qaicrt stand-in (no SDK here):
    the same greedy text as the CPU program's server, continuous batching on the device's KV."""
    from test_infer import DEVICE_ENV, STANDIN_COMPILER

    want = [complete(server.client(), p, max_tokens=16) for p in ("My name is", "The capital of France is")]
    s = Server(tmp_path / "store", "hw=ai100_16c", f"hw.compiler={STANDIN_COMPILER}", "compile.ctx_len=128",
               env=DEVICE_ENV)
    try:
        c = s.client()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            got = list(pool.map(lambda p: complete(c, p, max_tokens=16), ("My name is", "The capital of France is")))
        assert got == want and s.health()["slots"] == 4
    finally:
        s.stop()
    assert "(causal_lm, 4 slots)" in s.log.read_text()


def _trees(store: Path) -> tuple[Path, Path]:
    """(the package, the checkpoint the load stage wrote) in a server's store."""
    trees = [t for t in (store / "trees").iterdir() if t.is_dir()]
    package = next(t for t in trees if (t / "manifest.json").is_file())
    checkpoint = next(t for t in trees if (t / "config.json").is_file() and not (t / "manifest.json").is_file())
    return package, checkpoint


def _torch_logprobs(checkpoint: Path, ids: list[int]) -> np.ndarray:
    """[len(ids) - 1] log p(ids[i] | ids[:i]) by the PyTorch model in fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    return logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()


def test_echo_with_logprobs_scores_the_prompt_as_the_reference_does(server):
    """What harnesses score text with: the prompt's tokens' log-probabilities (teacher forced), then the new one's."""
    from transformers import AutoTokenizer

    store = Path(server.proc.args[4].split("=", 1)[1])
    package, checkpoint = _trees(store)
    prompt = "The capital of France is Paris, and the capital of Italy is"
    ids = AutoTokenizer.from_pretrained(package / "tokenizer")(prompt)["input_ids"]
    c = server.client()
    choice = c.completions.create(model=MODEL, prompt=prompt, max_tokens=2, logprobs=3, echo=True,
                                  temperature=0).choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(prompt) and lp.token_logprobs[0] is None and len(lp.tokens) == len(ids) + 2
    assert "".join(lp.tokens) == choice.text and lp.text_offset[1] == len(lp.tokens[0])
    expected = _torch_logprobs(checkpoint, ids)
    assert np.abs(np.array(lp.token_logprobs[1:len(ids)]) - expected).max() < 1e-3
    # the new tokens: greedy, so each is its position's likeliest, with its own log-probability among the top 3
    for token, value, top in zip(lp.tokens[len(ids):], lp.token_logprobs[len(ids):], lp.top_logprobs[len(ids):]):
        assert value == max(top.values()) and top[token] == value
    # token ids in, the same scores out; a bad id is a 400
    again = c.completions.create(model=MODEL, prompt=[ids], max_tokens=1, logprobs=0, echo=True).choices[0]
    assert np.allclose(again.logprobs.token_logprobs[1:len(ids)], lp.token_logprobs[1:len(ids)], atol=1e-9)
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=MODEL, prompt=[[10**9]], max_tokens=1)
    assert e.value.body["message"].startswith("prompt: token id 1000000000 is not allowed")


def test_lm_eval_scores_a_task_through_the_server(server, tmp_path):
    """lm-eval's local-completions model against the server: each choice's log-likelihood is the reference's."""
    import torch  # noqa: F401 - the reference below
    from transformers import AutoTokenizer

    store = Path(server.proc.args[4].split("=", 1)[1])
    package, checkpoint = _trees(store)
    docs = [{"question": "The capital of France is", "choices": [" Paris", " Rome", " Berlin"], "answer": 0},
            {"question": "Two plus two equals", "choices": [" four", " five"], "answer": 0},
            {"question": "The opposite of hot is", "choices": [" cold", " warm", " red"], "answer": 0}]
    (tmp_path / "tiny.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tiny.yaml").write_text(
        "task: tiny_choices\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'tiny.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n")
    args = (f"model={MODEL},base_url={server.url}/v1/completions,tokenizer={package / 'tokenizer'},"
            "tokenized_requests=True,num_concurrent=1,max_retries=1")
    r = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", args,
                        "--tasks", "tiny_choices", "--include_path", str(tmp_path), "--output_path",
                        str(tmp_path / "out"), "--log_samples"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    samples = [json.loads(line) for f in (tmp_path / "out").rglob("samples_tiny_choices_*.jsonl")
               for line in f.read_text().splitlines()]
    assert len(samples) == len(docs)
    tokenizer = AutoTokenizer.from_pretrained(package / "tokenizer")
    for sample in samples:
        for args_, resp in zip(sample["arguments"].values(), sample["resps"]):
            context, continuation = args_["arg_0"], args_["arg_1"]
            whole = tokenizer(context + continuation)["input_ids"]  # lm-eval's own pairing of the two
            start = len(tokenizer(context)["input_ids"])
            expected = _torch_logprobs(checkpoint, whole)[start - 1:].sum()
            assert abs(float(resp[0][0]) - expected) < 1e-3, (context, continuation, resp, expected)


def test_an_api_fuzz_from_the_openapi_schema_gets_no_server_error(server):
    """schemathesis draws requests from the server's own OpenAPI schema, ones that fit it and ones that
    break it (the model's name set on most bodies, so they reach generation): never a 5xx, the server alive."""
    import random

    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    pick = random.Random(0)
    seen: dict[str, list[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)[:2 if len(operation.body) else 1]:
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
                      database=None)
            def fuzz(case):
                if isinstance(case.body, dict) and pick.random() < 0.8:
                    case.body["model"] = MODEL
                response = case.call(timeout=120)
                seen.setdefault(f"{case.method} {case.path} {mode.value}", []).append(response.status_code)
                assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])

            fuzz()
    print({k: sorted(set(v)) for k, v in seen.items()})
    assert {"POST /v1/completions positive", "POST /v1/chat/completions negative", "GET /health positive"} <= set(seen)
    assert 200 in seen["POST /v1/completions positive"] and 200 in seen["POST /v1/chat/completions positive"], seen
    assert server.health()["status"] == "ok" and complete(server.client(), max_tokens=4)
