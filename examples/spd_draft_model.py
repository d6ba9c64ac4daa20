"""Draft-model speculative decoding from Python: the target and a layer-truncated draft built in one DAG.

    python examples/spd_draft_model.py [config overrides, e.g. model=tiny_llama draft_model=tiny_llama draft_model.num_layers=1]

The same as ``python -m pipeline.infer spd=draft draft_model=smollm2_135m_draft prompt=...``.
"""
import sys

from pipeline.api import build, compose
from pipeline.infer import make_proposer
from runtime.sessions import open_session
from runtime.textgen import generate_texts
from runtime.tokenizer import load_tokenizer

cfg = compose(["spd=draft", "draft_model=smollm2_135m_draft", *sys.argv[1:]])
result = build(cfg, goals=("package",), roles=("model", "draft_model"))  # both packages, one store
target, draft = result.packages["model"], result.packages["draft_model"]
session = open_session(target, spinning=False)  # the two sessions take turns on the same cores
proposer = make_proposer(cfg, session, open_session(draft, spinning=False))
info = generate_texts(session, load_tokenizer(target), target, ["Write a haiku about the sea."], generation_len=48,
                      chat=True, proposer=proposer, num_speculative_tokens=cfg.spd.num_speculative_tokens,
                      target_model_name=cfg.model.name)
print(info)
