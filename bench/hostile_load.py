"""The server under load with hostile requests among the valid ones: locust, N clients, one run.

    python bench/hostile_load.py [--model smollm2_135m] [--users 16] [--seconds 60] [--malformed 0.1]

Starts ``python -m pipeline.serve`` (4 KV slots; the package built or reused in
bench/.cache/serving-store) and runs locust (2.47.0, in its own venv bench/.cache/locust-venv:
it brings gevent, kept out of the project's) headless with --users clients for --seconds. Each
request is malformed with probability --malformed (a body drawn from MALFORMED: bad JSON and
types, a lone surrogate, a 2 MB prompt, a denormal temperature, a negative seed, non-text chat
parts, an unknown model), else a valid greedy completion of one of PROMPTS, whose text must
equal what that prompt got alone before the load. Prints locust's table per request kind
(counts, median / p95 latency), then: valid answered correctly, malformed answered 4xx, any
5xx, the server alive after it, and its exit code and summary line on SIGTERM.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
VENV = CACHE / "locust-venv"
LOCUST = "locust==2.47.0"
sys.path.insert(0, str(ROOT / "tests"))

PROMPTS = ["The capital of France is", "Once upon a time, a dragon", "The three primary colors are",
           "A compiler is a program that", "def fibonacci(n):"]
MAX_TOKENS = 16

LOCUSTFILE = r'''
import json, os, random
from locust import HttpUser, constant, events, task

MODEL = os.environ["LOAD_MODEL"]
LOAD = json.load(open(os.environ["LOAD_INPUT"]))
WANT, MALFORMED = LOAD["want"], LOAD["malformed"]  # prompt -> its text alone; [name, raw body]
SHARE = float(os.environ["LOAD_SHARE"])
TALLY = {"valid": 0, "valid_correct": 0, "malformed": 0, "malformed_4xx": 0, "5xx": 0, "wrong": []}


class Client(HttpUser):
    wait_time = constant(0)

    @task
    def one(self):
        if random.random() < SHARE:
            name, body = random.choice(MALFORMED)
            with self.client.post("/v1/completions" if "chat" not in name else "/v1/chat/completions",
                                  data=body.encode("utf-8", "surrogatepass"), name=f"malformed",
                                  headers={"content-type": "application/json"}, catch_response=True) as r:
                TALLY["malformed"] += 1  # counted once answered: requests cut off by the end of the run are not
                if 400 <= r.status_code < 500 and "error" in r.json():
                    TALLY["malformed_4xx"] += 1
                    r.success()
                else:
                    TALLY["5xx"] += r.status_code >= 500
                    r.failure(f"{name}: {r.status_code}")
            return
        prompt = random.choice(list(WANT))
        with self.client.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": %d,
                                                        "temperature": 0}, name="valid", catch_response=True) as r:
            TALLY["valid"] += 1
            text = r.json()["choices"][0]["text"] if r.status_code == 200 else None
            if text == WANT[prompt]:
                TALLY["valid_correct"] += 1
                r.success()
            else:
                TALLY["5xx"] += r.status_code >= 500
                TALLY["wrong"].append([prompt, r.status_code, text])
                r.failure(f"{r.status_code}: {text!r}")


@events.test_stop.add_listener
def _written(environment, **kw):
    with open(os.environ["LOAD_TALLY"], "w") as f:
        json.dump(TALLY, f)
''' % MAX_TOKENS


def malformed(model: str) -> list[tuple[str, str]]:
    """(name, raw JSON body) of each hostile request kind."""
    def body(**fields) -> str:
        return json.dumps({"model": model, **fields})

    return [("not json", "{\"model\": "), ("prompt a number", body(prompt=5)),
            ("max_tokens a word", body(prompt="x", max_tokens="many")),
            ("lone surrogate", body(prompt="a\ud800b")), ("2 MB prompt", body(prompt="word " * 400_000)),
            ("denormal temperature", body(prompt="x", temperature=5e-324)), ("negative seed", body(prompt="x", seed=-1)),
            ("chat non-text part", body(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}])),
            ("chat image part", body(messages=[{"role": "user", "content": [{"type": "image_url"}]}])),
            ("unknown model", json.dumps({"model": "nope", "prompt": "x"})),
            ("100k token ids", body(prompt=[7] * 100_000))]


def locust_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", LOCUST], check=True)
    return python


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--malformed", type=float, default=0.1)
    ap.add_argument("--store", type=Path, default=CACHE / "serving-store")
    args = ap.parse_args()
    from conftest import free_port
    from openai import OpenAI

    python = locust_python()
    port = free_port(set())
    work = CACHE / "hostile-load"
    work.mkdir(parents=True, exist_ok=True)
    log, run_dir = work / "serve.log", work / "serve-run"
    server = subprocess.Popen([sys.executable, "-m", "pipeline.serve", f"model={args.model}", f"store.root={args.store}",
                               f"serve.port={port}", "compile.full_batch_size=4", "compile.ctx_len=256",
                               f"hydra.run.dir={run_dir}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
        while True:
            assert server.poll() is None, log.read_text()
            try:
                client.models.list()
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        want = {p: client.completions.create(model=args.model, prompt=p, max_tokens=MAX_TOKENS, temperature=0)
                .choices[0].text for p in PROMPTS}
        (work / "locustfile.py").write_text(LOCUSTFILE)
        tally = work / "tally.json"
        (work / "input.json").write_text(json.dumps({"want": want, "malformed": malformed(args.model)}))
        env = {**os.environ, "LOAD_MODEL": args.model, "LOAD_INPUT": str(work / "input.json"),
               "LOAD_SHARE": str(args.malformed), "LOAD_TALLY": str(tally)}
        subprocess.run([str(python), "-m", "locust", "-f", str(work / "locustfile.py"), "--headless", "--host", url,
                        "-u", str(args.users), "-r", str(args.users), "-t", f"{args.seconds}s", "--csv",
                        str(work / "load"), "--only-summary", "--loglevel", "WARNING"], env=env, cwd=work,
                       capture_output=True, check=False)
        alive = client.models.list().data[0].id == args.model
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    counts = json.loads(tally.read_text())
    print(f"{args.model}: {args.users} locust clients for {args.seconds} s, {args.malformed:.0%} malformed, "
          f"valid requests greedy with max_tokens {MAX_TOKENS}, 4 KV slots, ctx_len 256")
    print(f"{'requests':<12}{'count':>7}{'failed':>8}{'median ms':>11}{'p95 ms':>9}{'req/s':>8}")
    for row in csv.DictReader((work / "load_stats.csv").open()):
        print(f"{row['Name']:<12}{row['Request Count']:>7}{row['Failure Count']:>8}{row['Median Response Time']:>11}"
              f"{row['95%']:>9}{float(row['Requests/s']):8.2f}")
    print(f"valid answered with their text alone: {counts['valid_correct']} of {counts['valid']}; malformed answered "
          f"4xx: {counts['malformed_4xx']} of {counts['malformed']}; 5xx: {counts['5xx']}; server alive after: "
          f"{'yes' if alive else 'NO'}")
    for wrong in counts["wrong"][:5]:
        print(f"  wrong: {wrong}")
    stopped = next((line for line in log.read_text().splitlines() if line.startswith("stopped")), "(no stop line)")
    print(f"SIGTERM: exit {code}; {stopped}")


if __name__ == "__main__":
    main()
