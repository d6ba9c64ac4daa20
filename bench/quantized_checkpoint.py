"""Real quantized checkpoints made by llm-compressor from SmolLM2, built kept compressed, against our own int4.

    python bench/quantized_checkpoint.py [--threads 2] [--new-tokens 128] [--rounds 5] [--eval-tokens 4096]

llm-compressor pins transformers below ours, so it runs in its own venv (bench/.cache/llmc-venv,
made once: torch 2.13.0 and llmcompressor 0.14.0.1 from the package index) through
bench/llmc_quantize.py: W4A16 (int4 in groups of 32, lm_head float) by round-to-nearest and by
GPTQ calibrated on 32 x 256 tokens of Python's standard library docstrings (not the gate's text).
Each checkpoint is built here with ``model.source=local`` (its integers into MatMulNBits
unchanged; checked: every quantized Linear taken from the checkpoint), beside the package
quantized by our own stage (``quantize.weights=int4``, RTN, groups of 32, lm_head and the tied
table int4 too). Quality: bench/compressed.py's gate metrics against the original fp32 SmolLM2
(not against each checkpoint's own float meaning, which would hide its rounding); speed and
bytes as there.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from compressed import build, model_bytes, quality
from decode import ROOT, in_process, speed_arguments

VENV = ROOT / "bench" / ".cache" / "llmc-venv"
LLMC = ("torch==2.13.0", "llmcompressor==0.14.0.1")


def llmc_python() -> str:
    python = VENV / "bin" / "python"
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *LLMC], check=True)
    return str(python)


def calibration(folder: str, samples: int = 32, length: int = 256) -> Path:
    """Token sequences of the standard library's docstrings (a text apart from the gate's)."""
    import importlib
    import inspect

    from transformers import AutoTokenizer

    text = []
    for name in ("argparse", "collections", "json", "pathlib", "subprocess", "threading", "typing", "unittest",
                 "logging", "asyncio", "email", "http.client", "sqlite3", "decimal", "fractions", "statistics"):
        module = importlib.import_module(name)
        text += [inspect.getdoc(module) or ""] + [inspect.getdoc(v) or "" for _, v in inspect.getmembers(module)
                                                  if inspect.isclass(v) or inspect.isfunction(v)]
    ids = AutoTokenizer.from_pretrained(folder)("\n\n".join(t for t in text if t)).input_ids
    chunks = [ids[i:i + length] for i in range(0, samples * length, length)]
    path = ROOT / "bench" / ".cache" / "llmc-calibration.json"
    path.write_text(json.dumps([c for c in chunks if len(c) == length]))
    return path


def checkpoint(folder: str, method: str) -> str:
    out = ROOT / "bench" / ".cache" / f"smollm2-w4a16-{method}"
    if not (out / "config.json").is_file():
        extra = [str(calibration(folder))] if method == "gptq" else []
        p = subprocess.run([llmc_python(), str(ROOT / "bench" / "llmc_quantize.py"), folder, str(out), method, *extra],
                           capture_output=True, text=True)
        if p.returncode != 0:
            errors = [line for line in p.stderr.splitlines() if "Error" in line or "error" in line]
            sys.exit(f"bench: llm-compressor ({method}) failed: {errors[-3:] or p.stderr[-2000:]}")
    return str(out)


def build_checkpoint(path: str, threads: int) -> tuple[str, int]:
    """(package, quantized Linears the quantize stage took from the checkpoint)."""
    from pipeline.api import build as build_cfg, compose

    cfg = compose(["model=smollm2_135m", "model.source=local", f"model.path={path}", "model.tokenizer=null",
                   f"hw.num_cores={threads}"])
    result = build_cfg(cfg, echo=lambda line: None, goals=("package",))
    if not result.ok:
        sys.exit(f"bench: the build of {path} failed: {[(s.name, s.error) for s in result.stages if s.error]}")
    program = json.loads((Path(result.package) / "manifest.json").read_text())["program"]
    taken = ((program.get("build") or {}).get("quantize") or {}).get("checkpoint", {}).get("linears", 0)
    return str(result.package), taken


def main() -> None:
    ap = speed_arguments(__doc__)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    args = ap.parse_args()
    os.chdir(ROOT)

    fp32, folder = build("smollm2_135m", args.threads, "fp32")
    ours, _ = build("smollm2_135m", args.threads, "int4")
    packages = {"package fp32": fp32, "package int4": ours}
    taken = {}
    for method in ("rtn", "gptq"):
        packages[f"llmc {method}"], taken[method] = build_checkpoint(checkpoint(folder, method), args.threads)
    rounds: dict[str, list[dict]] = {name: [] for name in packages}
    for _ in range(args.rounds):
        for name, package in packages.items():
            rounds[name].append(in_process("package", package, args.new_tokens, args.threads))
    scores = quality(packages, {}, folder, args.eval_tokens, args.threads)
    print(f"SmolLM2-135M: {args.threads} threads, {args.new_tokens} new tokens, medians of {args.rounds} rounds; quality: "
          f"{scores['package fp32']['positions']} teacher-forced positions against the original fp32 model; "
          f"Linears taken from the checkpoint unchanged: rtn {taken['rtn']}, gptq {taken['gptq']} (of 210)")
    print(f"{'package':<18}{'decode tok/s':>13}{'TTFT ms':>9}{'MB':>8}{'ppl':>10}{'ppl ratio':>11}{'mean KL':>9}"
          f"{'top-1':>7}")
    for name, package in packages.items():
        s = scores[name]
        tok = statistics.median(r["chat"]["decode_tok_s"] for r in rounds[name])
        ttft = statistics.median(r["chat"]["ttft_ms"] for r in rounds[name])
        print(f"{name:<18}{tok:13.1f}{ttft:9.1f}{model_bytes(package) / 1e6:8.1f}{s['ppl_package']:10.3f}"
              f"{s['ppl_ratio']:11.4f}{s['mean_kl']:9.4f}{s['top1_agreement']:7.3f}")


if __name__ == "__main__":
    main()
