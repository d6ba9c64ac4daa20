"""CPU generation speed of the package against HF transformers' eager `generate` and onnxruntime-genai, one run.

    python bench/decode.py [--model smollm2_135m] [--threads 2] [--new-tokens 128] [--rounds 5]

Same model folder (the load stage's HF checkpoint), same threads, same prompts, same number
of greedy tokens (EOS ignored, so every engine makes exactly --new-tokens), each engine in a
fresh process per round, engines alternating within each round; medians over the rounds.
Prompts: the chat-template prompt "Write a short story about a robot who learns to paint."
(decode speed and TTFT) and the short plain prompt "The capital of France is" (TTFT).
TTFT: from the first prefill call to the first token (tokenization excluded). Decode tok/s:
the tokens after the first, divided by the time from the first token to the last. Peak RSS: the
process's, model load included. Then the package at ctx_len 256 vs 2048, at the same positions.
onnxruntime-genai (pinned below) is installed into this venv if missing (its dependencies
are already here); its model is built from the same folder by its own builder, once.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENAI = "onnxruntime-genai==0.18.0"
CHAT = "Write a short story about a robot who learns to paint."
PLAIN = "The capital of France is"


# ---------------------------------------------------------------- engines (each in its own process)
def _rss_mib() -> float:
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_package(package: str, new: int, threads: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from runtime.scheduler import Request, Scheduler
    from runtime.sessions import open_session
    from runtime.textgen import encode
    from runtime.tokenizer import load_tokenizer

    session, tokenizer = open_session(package, num_threads=threads), load_tokenizer(package)
    out = {}
    for name, prompt, chat, n in (("warmup", CHAT, True, 8), ("chat", CHAT, True, new), ("plain", PLAIN, False, 2)):
        ids = encode(tokenizer, [prompt], chat)[0]
        run = Scheduler(session).run([Request(0, ids, n)])  # no EOS ids: exactly n tokens
        m = run.perf_metrics()
        out[name] = {"prompt_tokens": len(ids), "ids": run.results[0].ids, "ttft_ms": m["prefill_time_s"] * 1000,
                     "decode_tok_s": m["decode_throughput_tok_s"]}
    return {**out, "peak_rss_mib": _rss_mib()}


def run_hf(folder: str, new: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    class Clock:  # a streamer: generate() calls put() with the prompt, then with each new token
        def __init__(self):
            self.stamps: list[float] = []

        def put(self, value):
            self.stamps.append(time.perf_counter())

        def end(self):
            pass

    out = {}
    for name, prompt, chat, n in (("warmup", CHAT, True, 8), ("chat", CHAT, True, new), ("plain", PLAIN, False, 2)):
        if chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        else:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
        clock = Clock()
        start = time.perf_counter()
        with torch.inference_mode():
            result = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=clock)
        first, last = clock.stamps[1], clock.stamps[-1]  # stamps[0]: the prompt
        out[name] = {"prompt_tokens": ids.shape[1], "ids": result[0, ids.shape[1]:].tolist(),
                     "ttft_ms": (first - start) * 1000, "decode_tok_s": (n - 1) / (last - first) if n > 1 else 0.0}
    return {**out, "peak_rss_mib": _rss_mib()}


def run_genai(model_dir: str, new: int, threads: int) -> dict:
    import onnxruntime_genai as og

    model = og.Model(model_dir)
    tokenizer = og.Tokenizer(model)
    out = {}
    for name, prompt, chat, n in (("warmup", CHAT, True, 8), ("chat", CHAT, True, new), ("plain", PLAIN, False, 2)):
        text = tokenizer.apply_chat_template(json.dumps([{"role": "user", "content": prompt}]),
                                             add_generation_prompt=True) if chat else prompt
        ids = [int(i) for i in tokenizer.encode(text)]
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, num_beams=1, max_length=len(ids) + n, min_length=len(ids) + n)
        generator = og.Generator(model, params)
        stamps, tokens = [], []
        start = time.perf_counter()
        generator.append_tokens(ids)
        while not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
            stamps.append(time.perf_counter())
        out[name] = {"prompt_tokens": len(ids), "ids": tokens, "ttft_ms": (stamps[0] - start) * 1000,
                     "decode_tok_s": (n - 1) / (stamps[-1] - stamps[0]) if n > 1 else 0.0}
    return {**out, "peak_rss_mib": _rss_mib()}


# ---------------------------------------------------------------- orchestration
def build(model: str, threads: int, ctx_len: int) -> tuple[str, str]:
    """(package, HF folder of the load stage) for the model on the cpu target, built or reused."""
    from pipeline.api import build as build_cfg, compose

    cfg = compose([f"model={model}", f"hw.num_cores={threads}", f"compile.ctx_len={ctx_len}"])
    result = build_cfg(cfg, echo=lambda line: None, goals=("package",))
    if not result.ok:
        sys.exit(f"bench: the build failed: {[(s.name, s.error) for s in result.stages if s.error]}")
    load = result.stage("load")
    folder = result.store_root / "trees" / load.digest
    if not (folder / "config.json").is_file():  # a local or hub source is used in place (not stored)
        folder = Path(cfg.model.path)
    return str(result.package), str(folder)


def genai_model(folder: str, threads: int, precision: str = "fp32") -> str:
    """onnxruntime-genai's CPU model of the folder (``-p fp32`` or ``int4``), built once by its builder
    (cached by folder and precision)."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime_genai") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", GENAI], check=True)
    suffix = "" if precision == "fp32" else f"-{precision}"
    out = ROOT / "bench" / ".cache" / f"genai-{Path(folder).name[:16]}{suffix}"
    config = out / "genai_config.json"
    if not config.is_file():
        cache = ROOT / "bench" / ".cache" / "genai-build"
        subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", folder, "-o", str(out),
                        "-p", precision, "-e", "cpu", "-c", str(cache)], check=True, capture_output=True)
    data = json.loads(config.read_text())
    data["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    config.write_text(json.dumps(data, indent=4))
    return str(out)


def in_process(engine: str, target: str, new: int, threads: int) -> dict:
    """One round of one engine, in a fresh process."""
    p = subprocess.run([sys.executable, __file__, "--engine", engine, "--target", target, "--new-tokens", str(new),
                        "--threads", str(threads)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if p.returncode != 0:
        sys.exit(f"bench: {engine} failed:\n{p.stdout[-2000:]}{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def speed_arguments(doc: str) -> argparse.ArgumentParser:
    """The arguments every decode-speed bench takes: model, threads, new tokens, rounds."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    return ap


def main() -> None:
    ap = speed_arguments(__doc__)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:  # a child: one engine, one round
        runner = {"package": run_package, "hf": run_hf, "genai": run_genai}[args.engine]
        print(json.dumps(runner(args.target, args.new_tokens, args.threads)))
        return

    package, folder = build(args.model, args.threads, 256)
    long_package, _ = build(args.model, args.threads, 2048)
    engines = {"package": package, "hf": folder, "genai": genai_model(folder, args.threads),
               "package ctx 2048": long_package}
    rounds: dict[str, list[dict]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, target in engines.items():
            rounds[name].append(in_process(name.split()[0], target, args.new_tokens, args.threads))

    def med(name: str, prompt: str, key: str) -> float:
        return statistics.median(r[prompt][key] for r in rounds[name])

    chat_tokens = rounds["package"][0]["chat"]["prompt_tokens"]
    print(f"{args.model}: {args.threads} threads, greedy, {args.new_tokens} new tokens, chat prompt of {chat_tokens} tokens, "
          f"medians of {args.rounds} rounds (engines alternating, a fresh process each)")
    print(f"{'engine':<22}{'decode tok/s':>13}{'TTFT chat ms':>14}{'TTFT plain ms':>15}{'peak RSS MiB':>14}")
    for name in engines:
        rss = statistics.median(r["peak_rss_mib"] for r in rounds[name])
        print(f"{name:<22}{med(name, 'chat', 'decode_tok_s'):13.1f}{med(name, 'chat', 'ttft_ms'):14.1f}"
              f"{med(name, 'plain', 'ttft_ms'):15.1f}{rss:14.0f}")
    ours, hf, genai = (med(n, "chat", "decode_tok_s") for n in ("package", "hf", "genai"))
    print(f"decode: package / HF eager {ours / hf:.2f}x, package / onnxruntime-genai {ours / genai:.2f}x "
          f"(onnxruntime-genai / HF eager {genai / hf:.2f}x)")
    for prompt in ("chat", "plain"):
        t = {n: med(n, prompt, "ttft_ms") for n in ("package", "hf", "genai")}
        print(f"TTFT {prompt}: package / HF eager {t['package'] / t['hf']:.2f}, onnxruntime-genai / HF eager "
              f"{t['genai'] / t['hf']:.2f}")
    long = med("package ctx 2048", "chat", "decode_tok_s")
    print(f"ctx_len 2048 vs 256, same positions: decode {long:.1f} vs {ours:.1f} tok/s ({long / ours:.2f}x)")
    same = {n: rounds[n][0]["chat"]["ids"] == rounds["package"][0]["chat"]["ids"] for n in engines}
    print("same tokens as the package: " + ", ".join(f"{n} {'yes' if s else 'NO'}" for n, s in same.items()))


if __name__ == "__main__":
    main()
