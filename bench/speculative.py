"""Speculative decoding on the CPU: prompt lookup and a layer-truncated draft against plain decoding, one run.

    python bench/speculative.py [--model smollm2_135m] [--draft smollm2_135m_draft] [--k 3] [--rounds 5]

Three kinds of prompt (chat template, greedy, at most --new-tokens, stopping at EOS): editing a
JSON record (the answer copies most of the prompt), continuing code with repeated structure,
and free prose. Engines: plain decoding of the plain package (the baseline), plain decoding of
the speculative package (the same program's K+1 shape used one token at a time), prompt lookup
(spd=pld) and the draft model (spd=draft) on that package. Each engine runs in a fresh process
per round, engines alternating within a round; medians over the rounds. Decode tok/s: the
tokens after the first / the time from the first token to the last. Every engine must give the
baseline's tokens (checked, printed).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD = {"id": 4821, "name": "Ada Lovelace", "email": "ada@example.org", "city": "London", "country": "United Kingdom",
          "born": 1815, "languages": ["English", "French"], "roles": ["mathematician", "writer"], "active": False}
PROMPTS = {
    "json edit": ("Here is a JSON record:\n" + json.dumps(RECORD, indent=2) + "\nRewrite the record with the city set to "
                  "\"Paris\" and the country set to \"France\". Answer with the JSON only."),
    "code": ("Continue this Python code with the next two functions in the same style.\n\n"
             "def area_of_square(side):\n    \"\"\"Return the area of a square.\"\"\"\n    return side * side\n\n\n"
             "def area_of_rectangle(width, height):\n    \"\"\"Return the area of a rectangle.\"\"\"\n    return width * height\n\n\n"
             "def area_of_triangle(base, height):\n    \"\"\"Return the area of a triangle.\"\"\"\n    return base * height / 2\n\n\n"),
    "prose": "Write a short story about a robot who learns to paint.",
}


def run_engine(engine: str, packages: dict, new: int, threads: int, k: int) -> dict:
    """One round of one engine over every prompt (in this process)."""
    sys.path.insert(0, str(ROOT))
    from runtime import speculative
    from runtime.scheduler import Request, Scheduler
    from runtime.sessions import open_session
    from runtime.textgen import encode, eos_ids
    from runtime.tokenizer import load_tokenizer

    package = packages["plain" if engine == "plain" else "spd"]
    spinning = engine != "draft"  # a draft and its target take turns: their threads must not spin
    session, tokenizer = open_session(package, num_threads=threads, spinning=spinning), load_tokenizer(package)
    draft = open_session(packages["draft"], num_threads=threads, spinning=False) if engine == "draft" else None
    eos = eos_ids(tokenizer, package)
    out = {}
    for name, prompt in [("warmup", PROMPTS["prose"]), *PROMPTS.items()]:
        ids = encode(tokenizer, [prompt], True)[0]
        if engine in ("plain", "plain on spd package"):
            scheduler = Scheduler(session, eos)
        else:
            proposer = speculative.PromptLookup(3) if engine == "pld" else speculative.DraftModel(draft, "draft")
            scheduler = speculative.SpeculativeScheduler(session, proposer, eos, num_speculative_tokens=k)
        run = scheduler.run([Request(0, ids, 8 if name == "warmup" else new)])
        m = run.perf_metrics()
        out[name] = {"ids": run.results[0].ids, "decode_tok_s": m["decode_throughput_tok_s"],
                     "accepted": m.get("mean_num_accepted_tokens", 1.0), "prompt_tokens": len(ids),
                     "draft_s": m.get("decode_draft_time_s", 0.0), "target_s": m.get("decode_target_time_s", m["decode_time_s"])}
    return out


def build(model: str, draft: str, threads: int, k: int) -> dict:
    from pipeline.api import build as build_cfg, compose

    def package(overrides: list[str], roles=("model",)) -> dict:
        cfg = compose([f"model={model}", f"hw.num_cores={threads}", "compile.ctx_len=512", *overrides])
        result = build_cfg(cfg, echo=lambda line: print(f"  {line}", file=sys.stderr), goals=("package",), roles=roles)
        if not result.ok:
            sys.exit(f"bench: the build failed: {[(s.name, s.error) for s in result.stages if s.error]}")
        return {role: str(p) for role, p in result.packages.items()}

    spd = package(["spd=draft", f"draft_model={draft}", f"spd.num_speculative_tokens={k}"], ("model", "draft_model"))
    return {"plain": package([])["model"], "spd": spd["model"], "draft": spd["draft_model"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--draft", default="smollm2_135m_draft")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--packages", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:  # a child: one engine, one round
        print(json.dumps(run_engine(args.engine, json.loads(args.packages), args.new_tokens, args.threads, args.k)))
        return

    packages = build(args.model, args.draft, args.threads, args.k)
    engines = ["plain", "plain on spd package", "pld", "draft"]
    rounds: dict[str, list[dict]] = {e: [] for e in engines}
    for _ in range(args.rounds):
        for engine in engines:
            p = subprocess.run([sys.executable, __file__, "--engine", engine, "--packages", json.dumps(packages),
                                "--new-tokens", str(args.new_tokens), "--threads", str(args.threads), "--k", str(args.k)],
                               cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if p.returncode != 0:
                sys.exit(f"bench: {engine} failed:\n{p.stdout[-2000:]}{p.stderr[-4000:]}")
            rounds[engine].append(json.loads(p.stdout.strip().splitlines()[-1]))

    def med(engine: str, prompt: str, key: str) -> float:
        return statistics.median(r[prompt][key] for r in rounds[engine])

    print(f"{args.model}, K={args.k}, draft {args.draft}: {args.threads} threads, greedy, chat template, "
          f"at most {args.new_tokens} new tokens (EOS stops), medians of {args.rounds} rounds")
    print(f"{'prompt':<11}{'engine':<22}{'new tokens':>11}{'decode tok/s':>13}{'tokens/step':>12}{'vs plain':>9}  same tokens")
    for prompt in PROMPTS:
        base = med("plain", prompt, "decode_tok_s")
        expected = rounds["plain"][0][prompt]["ids"]
        for engine in engines:
            same = all(r[prompt]["ids"] == expected for r in rounds[engine])
            tok_s = med(engine, prompt, "decode_tok_s")
            print(f"{prompt:<11}{engine:<22}{len(expected):>11}{tok_s:13.1f}{med(engine, prompt, 'accepted'):12.2f}"
                  f"{tok_s / base:8.2f}x  {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
