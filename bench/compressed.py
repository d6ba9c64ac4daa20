"""Compressed CPU packages (int8 / int4 weights) against the fp32 package and onnxruntime-genai fp32 and int4, one run.

    python bench/compressed.py [--model smollm2_135m] [--threads 2] [--new-tokens 128] [--rounds 5]
                               [--eval-tokens 4096]

Speed: bench/decode.py's protocol (the chat prompt, greedy, exactly --new-tokens, each engine in a
fresh process per round, engines alternating; medians). onnxruntime-genai's models come from its
own builder on the same HF folder (``-p fp32`` / ``-p int4 -e cpu``). Quality, every engine on the
same footing: the teacher-forced gate of ``validate`` (passes/numerics/gate.py) over the first
--eval-tokens of the gate's default text, in segments of the package's ctx_len - 1, against the
same PyTorch fp32 reference; the packages run as the gate runs them (chunked prefill, then decode
steps), genai's models the same way (its cache carried from the chunked prefill through decode
steps), at the same positions.
Bytes: each model's ONNX graph and weights files (tokenizers excluded; embedding and lm_head
included).
"""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

from decode import ROOT, genai_model, in_process, speed_arguments

# package name -> quantize overrides
WEIGHTS = {"fp32": [], "int8": ["quantize.weights=int8"], "int4": ["quantize.weights=int4"],
           "int4 asym": ["quantize.weights=int4", "quantize.symmetric=false"]}


def build(model: str, threads: int, weights: str) -> tuple[str, str]:
    """(package, HF folder of the load stage) with the MatMul weights as ``WEIGHTS[weights]`` says."""
    from pipeline.api import build as build_cfg, compose

    cfg = compose([f"model={model}", f"hw.num_cores={threads}", *WEIGHTS[weights]])
    result = build_cfg(cfg, echo=lambda line: None, goals=("package",))
    if not result.ok:
        sys.exit(f"bench: the {weights} build failed: {[(s.name, s.error) for s in result.stages if s.error]}")
    folder = result.store_root / "trees" / result.stage("load").digest
    if not (folder / "config.json").is_file():  # a local source is used in place
        folder = Path(cfg.model.path)
    return str(result.package), str(folder)


def model_bytes(folder: str) -> int:
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.suffix in (".onnx", ".data"))


class GenaiScorer:
    """An onnxruntime-genai model's decoder driven as the gate drives a package: its cache carried from
    chunked prefill of a segment's first half through one-token decode steps, logits at the same positions."""

    def __init__(self, folder: str, threads: int):
        import json

        import onnxruntime as ort

        config = json.loads((Path(folder) / "genai_config.json").read_text())["model"]["decoder"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.kv_heads, self.head_size = config["num_key_value_heads"], config["head_size"]
        self.session = ort.InferenceSession(str(Path(folder) / config["filename"]), options,
                                            providers=["CPUExecutionProvider"])
        self.pasts = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values")]
        self.outputs = ["logits"] + [p.name.replace("past_key_values", "present") for p in self.pasts]
        known = {"input_ids", "attention_mask", *(p.name for p in self.pasts)}
        if unknown := [i.name for i in self.session.get_inputs() if i.name not in known]:
            raise SystemExit(f"bench: genai inputs {unknown} are not known to this scorer")

    def logits(self, segment: list[int], chunk: int):
        """Logits [n, vocab] at ``gate.scored_positions(len(segment), chunk)``."""
        import numpy as np

        from passes.numerics import gate

        half = gate.prefill_length(len(segment), chunk)
        parts = [segment[first:min(first + chunk, half)] for first in range(0, half, chunk)]
        parts += [[token] for token in segment[half:len(segment) - 1]]
        cache = {p.name: np.zeros((1, self.kv_heads, 0, self.head_size),
                                  dtype=np.float16 if "float16" in p.type else np.float32) for p in self.pasts}
        done, rows = 0, []
        for part in parts:
            done += len(part)
            feeds = {"input_ids": np.asarray([part], dtype=np.int64),
                     "attention_mask": np.ones((1, done), dtype=np.int64), **cache}
            logits, *present = self.session.run(self.outputs, feeds)
            rows.append(logits[0, -1].astype(np.float32))
            cache = {p.name: v for p, v in zip(self.pasts, present)}
        return np.stack(rows)


def quality(packages: dict[str, str], genai: dict[str, str], folder: str, tokens: int, threads: int) -> dict[str, dict]:
    """The gate's metrics of every engine against the PyTorch fp32 reference, on the same positions."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from passes.numerics import eval_text, gate
    from runtime.sessions import open_session
    from runtime.tokenizer import load_tokenizer

    torch.set_num_threads(threads)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    sessions = {name: open_session(p, num_threads=threads) for name, p in packages.items()}
    scorers = {name: GenaiScorer(g, threads) for name, g in genai.items()}
    first = next(iter(sessions.values()))
    length, chunk = first.program.ctx_len - 1, first.program.spec("prefill").seq_len
    ids = load_tokenizer(next(iter(packages.values())))(eval_text.read_text(None)).input_ids  # as validate does
    tallies = {name: gate.Tally() for name in (*sessions, *scorers)}
    for segment in gate.segments(ids, tokens, length):
        ref = gate.reference_logits(reference, segment)
        positions = gate.scored_positions(len(segment), chunk)
        targets = np.asarray(segment)[positions + 1]
        for name, session in sessions.items():
            got_positions, logits = gate.package_logits(session, segment)
            assert list(got_positions) == list(positions)
            tallies[name].add(ref[positions], logits, targets)
        for name, scorer in scorers.items():
            tallies[name].add(ref[positions], scorer.logits(segment, chunk), targets)
    return {name: t.result() for name, t in tallies.items()}


def main() -> None:
    ap = speed_arguments(__doc__)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    args = ap.parse_args()
    os.chdir(ROOT)  # the project's store (store.root is relative)

    packages, folder = {}, ""
    for weights in WEIGHTS:
        packages[f"package {weights}"], folder = build(args.model, args.threads, weights)
    genai = {f"genai {p}": genai_model(folder, args.threads, p) for p in ("fp32", "int4")}
    engines = {**packages, **genai}
    rounds: dict[str, list[dict]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, target in engines.items():
            rounds[name].append(in_process(name.split()[0], target, args.new_tokens, args.threads))

    def med(name: str, key: str) -> float:
        return statistics.median(r["chat"][key] for r in rounds[name])

    scores = quality(packages, genai, folder, args.eval_tokens, args.threads)
    size = {name: model_bytes(path) for name, path in engines.items()}
    chat_tokens = rounds["package fp32"][0]["chat"]["prompt_tokens"]
    print(f"{args.model}: {args.threads} threads, greedy, {args.new_tokens} new tokens after the chat prompt of "
          f"{chat_tokens} tokens, medians of {args.rounds} rounds (engines alternating, a fresh process each); "
          f"quality: {scores['package fp32']['positions']} teacher-forced positions of the gate's text against "
          "PyTorch fp32; bytes: ONNX graphs + weights, embedding and lm_head included")
    print(f"{'engine':<18}{'decode tok/s':>13}{'TTFT ms':>9}{'MB':>8}{'ppl':>10}{'ppl ratio':>11}{'mean KL':>9}"
          f"{'top-1':>7}")
    for name in engines:
        s = scores[name]
        print(f"{name:<18}{med(name, 'decode_tok_s'):13.1f}{med(name, 'ttft_ms'):9.1f}{size[name] / 1e6:8.1f}"
              f"{s['ppl_package']:10.3f}{s['ppl_ratio']:11.4f}{s['mean_kl']:9.4f}{s['top1_agreement']:7.3f}")
    tok = {name: med(name, "decode_tok_s") for name in engines}
    ttft = {name: med(name, "ttft_ms") for name in engines}
    print(f"decode: package int8 / genai fp32 {tok['package int8'] / tok['genai fp32']:.2f}x, package int4 / genai int4 "
          f"{tok['package int4'] / tok['genai int4']:.2f}x, package int8 / package fp32 "
          f"{tok['package int8'] / tok['package fp32']:.2f}x, package int4 / package fp32 "
          f"{tok['package int4'] / tok['package fp32']:.2f}x")
    print(f"int4 asymmetric: decode / genai int4 {tok['package int4 asym'] / tok['genai int4']:.2f}x, perplexity "
          f"{scores['package int4 asym']['ppl_package']:.3f}")
    print(f"perplexity: package int4 {scores['package int4']['ppl_package']:.3f} vs genai int4 "
          f"{scores['genai int4']['ppl_package']:.3f} (reference {scores['package fp32']['ppl_reference']:.3f}); "
          f"package int8 ratio {scores['package int8']['ppl_ratio']:.4f}")
    print(f"bytes: package int8 / fp32 {size['package int8'] / size['package fp32']:.3f}, int4 / fp32 "
          f"{size['package int4'] / size['package fp32']:.3f}; genai int4 / genai fp32 "
          f"{size['genai int4'] / size['genai fp32']:.3f}")
    print(f"TTFT: package int8 / fp32 {ttft['package int8'] / ttft['package fp32']:.2f}, int4 / fp32 "
          f"{ttft['package int4'] / ttft['package fp32']:.2f}")


if __name__ == "__main__":
    main()
