"""Serving throughput: 1, 4 and 16 concurrent clients against the same package driven serially, one run.

    python bench/serving.py [--model smollm2_135m] [--slots 4] [--requests 16] [--max-tokens 32] [--rounds 3]

Starts ``python -m pipeline.serve`` (continuous batching over --slots KV slots; the package
is built or reused in bench/.cache/serving-store) and sends --requests completions (distinct
prompts, greedy, --max-tokens each) through the official ``openai`` client from 1, 4 and 16
threads. The baseline is the same package driven serially in this process (runtime
Scheduler, one prompt at a time, no HTTP). Medians over --rounds; every concurrency level must
return the texts the single client got.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", type=Path, default=ROOT / "bench" / ".cache" / "serving-store")
    args = parser.parse_args()

    from conftest import free_port
    from openai import OpenAI

    port = free_port(set())
    log = args.store.parent / "serving-bench.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([sys.executable, "-m", "pipeline.serve", f"model={args.model}", f"store.root={args.store}",
                               f"serve.port={port}", f"compile.full_batch_size={args.slots}", "compile.ctx_len=256",
                               f"hydra.run.dir={args.store}/runs/serving-bench"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600)
        while True:
            assert server.poll() is None, log.read_text()
            try:
                client.models.list()
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        topics = ("a dragon", "the sea", "a lighthouse", "a robot", "a small village", "the moon", "a library", "a storm")
        prompts = [f"Once upon a time, {topics[i % len(topics)]} (story {i}) was" for i in range(args.requests)]

        def one(prompt: str) -> tuple[str, int]:
            r = client.completions.create(model=args.model, prompt=prompt, max_tokens=args.max_tokens)
            return r.choices[0].text, r.usage.completion_tokens

        want = [one(p) for p in prompts]  # warm-up, and the texts every level must give
        package = next(line.split(" from ", 1)[1].split(" on http", 1)[0] for line in log.read_text().splitlines()
                       if line.startswith("serving "))
        rows = [("serial, in process (no HTTP)", *serial_in_process(Path(package), prompts, args.max_tokens, args.rounds,
                                                                   [w[0] for w in want]))]
        for clients in (1, 4, 16):
            times = []
            for _ in range(args.rounds):
                with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                    started = time.perf_counter()
                    got = list(pool.map(one, prompts))
                    times.append(time.perf_counter() - started)
                assert got == want, f"{clients} clients changed the texts"
            rows.append((f"{clients} concurrent client{'s' if clients > 1 else ''} (HTTP)", statistics.median(times),
                         sum(n for _, n in want)))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{args.model}, {args.requests} requests of up to {args.max_tokens} new tokens (greedy; {rows[-1][2]} in all), "
          f"{args.slots} KV slots, medians of {args.rounds}; every level returned the single client's texts")
    print(f"{'driven by':<34}{'requests/s':>11}{'tokens/s':>10}{'vs serial':>11}")
    base = rows[0][1]
    for name, seconds, tokens in rows:
        print(f"{name:<34}{args.requests / seconds:11.2f}{tokens / seconds:10.1f}{base / seconds:10.2f}x")


def serial_in_process(package: Path, prompts: list[str], max_tokens: int, rounds: int, want: list[str]) -> tuple[float, int]:
    """The package run one prompt at a time by the runtime's scheduler; (median seconds, tokens)."""
    from runtime.scheduler import Request, Scheduler
    from runtime.sessions import open_session
    from runtime.textgen import eos_ids
    from runtime.tokenizer import load_tokenizer

    session, tokenizer = open_session(package), load_tokenizer(package)
    scheduler = Scheduler(session, eos_ids(tokenizer, package))
    ids = [list(tokenizer(p)["input_ids"]) for p in prompts]
    times, tokens = [], 0
    for _ in range(rounds + 1):  # the first is a warm-up
        started, tokens, texts = time.perf_counter(), 0, []
        for i, p in enumerate(ids):
            result = scheduler.run([Request(i, p, max_tokens)]).results[0]
            tokens += len(result.ids)
            texts.append(tokenizer.decode(result.ids, skip_special_tokens=True))
        times.append(time.perf_counter() - started)
        assert texts == want, "the in-process run gave other texts than the server"
    return statistics.median(times[1:]), tokens


if __name__ == "__main__":
    main()
