"""Prompt lookup decoding from Python: build (or reuse) a speculative SmolLM2 package and generate with n-gram proposals.

    python examples/spd_prompt_lookup.py [config overrides, e.g. model=tiny_llama spd.num_speculative_tokens=5]

The same as ``python -m pipeline.infer spd=pld prompts=[...]``, spelled out with the library.
"""
import json
import sys

from pipeline.api import build, compose
from pipeline.infer import make_proposer
from runtime.sessions import open_session
from runtime.textgen import generate_texts
from runtime.tokenizer import load_tokenizer

RECORD = {"name": "Ada Lovelace", "city": "London", "country": "United Kingdom", "born": 1815}
PROMPT = f"Here is a JSON record:\n{json.dumps(RECORD, indent=2)}\nRewrite it with the city set to \"Paris\". Answer with the JSON only."

cfg = compose(["spd=pld", *sys.argv[1:]])
package = build(cfg, goals=("package",)).package          # the target, compiled to score K+1 tokens a step
session = open_session(package)
info = generate_texts(session, load_tokenizer(package), package, [PROMPT], generation_len=96, chat=True,
                      proposer=make_proposer(cfg, session), num_speculative_tokens=cfg.spd.num_speculative_tokens,
                      target_model_name=cfg.model.name)
print(info)
print("tokens per target step:", info.speculative["accepted_per_step"][0])
