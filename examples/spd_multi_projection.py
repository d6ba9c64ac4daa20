"""Multi-projection speculative decoding from Python: projection heads on the target propose the next K tokens.

    python examples/spd_multi_projection.py [spd.speculator=<folder>] [config overrides, e.g. model=tiny_llama]

A speculator folder holds speculator_config.json (turbo_num_heads, turbo_num_layers) and
speculator.safetensors; without one the heads are random (seeded by model.seed), which shows
the mechanics (the output equals plain decoding) but accepts almost nothing.
"""
import sys

from pipeline.api import build, compose
from pipeline.infer import make_proposer
from runtime.sessions import open_session
from runtime.textgen import generate_texts
from runtime.tokenizer import load_tokenizer

cfg = compose(["spd=multiproj", *sys.argv[1:]])
package = build(cfg, goals=("package",)).package  # the heads are a transform: keyed and exported like any stage
session = open_session(package)
info = generate_texts(session, load_tokenizer(package), package, ["The capital of France is"], generation_len=32,
                      proposer=make_proposer(cfg, session), num_speculative_tokens=cfg.spd.num_speculative_tokens,
                      target_model_name=cfg.model.name)
print(info)
