"""Pass `embedding_reference`: sentence-transformers' own embeddings of a fixed set of texts, for validation.

The reference is built from sentence-transformers' modules (Transformer, Pooling, Normalize)
with the build's pooling and normalization and its longest compiled length as the truncation
length, so it is the model a user of that library would run; a pooling function (which that
library has no module for) runs on the HF model's last hidden states in PyTorch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from passes.embedding import transform
from passes.embedding.transform import EmbeddingParams, settings
from passes.targets.shapes import EncoderShapes
from pipeline.pass_api import Needs, cfg_field, hook, register_pass

REFERENCE = "reference.json"
EMBEDDINGS = "embeddings.npy"
# Short and long, plain and odd (accents, digits, code, emoji, repeated words); the last is cut at
# the longest compiled length.
TEXTS = (
    "Hello!",
    "The capital of France is Paris.",
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "Les étudiants ont passé l'examen de mathématiques à 8h30.",
    "def add(a, b):\n    return a + b  # adds two numbers",
    "Embeddings map sentences to vectors so that similar meanings land close together 🙂.",
    "The quarterly report shows revenue of $4.2M, up 17% year over year, with margins stable at 31%.",
    "Rain rain rain rain rain rain rain rain rain rain.",
    "Transformers compute contextual representations of every token; pooling turns them into one vector "
    "per text, which a retrieval system compares by cosine similarity.",
    " ".join(["In the long paragraph that follows, every sentence adds a little more detail about the "
              "history of the city, its rivers, its bridges and the people who built them."] * 12),
)


@dataclass(frozen=True)
class EmbeddingReferenceParams(EmbeddingParams):
    seq_len: Any = cfg_field(EncoderShapes, "seq_len")  # the longest length is the truncation length


def max_length(seq_len: Any) -> int:
    return max(seq_len) if isinstance(seq_len, (list, tuple)) else int(seq_len)


@register_pass("embedding_reference", params=EmbeddingReferenceParams,
               deps=("torch", "transformers", "sentence_transformers"), materialize=True,
               needs=Needs(modules=("torch", "transformers", "sentence_transformers")))
def embedding_reference(inputs: Mapping[str, Any], params: EmbeddingReferenceParams, out: Path) -> dict[str, Any]:
    import numpy as np

    checkpoint = Path(inputs["checkpoint"])
    mode, normalize = settings(checkpoint, params.pooling, params.normalize)
    length = max_length(params.seq_len)
    vectors = reference_embeddings(checkpoint, mode, normalize, length, list(TEXTS))
    np.save(out / EMBEDDINGS, vectors.astype(np.float32))
    record = {"texts": list(TEXTS), "pooling": mode, "normalize": normalize, "max_length": length,
              "by": "torch" if ":" in mode else "sentence_transformers"}
    (out / REFERENCE).write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n")
    return {"texts": len(TEXTS), "dim": int(vectors.shape[1]), "pooling": mode, "normalize": normalize}


def reference_embeddings(checkpoint: Path, mode: str, normalize: bool, length: int, texts: list[str]) -> Any:
    """[len(texts), hidden] float32 as sentence-transformers (or, for a pooling function, PyTorch) computes them."""
    import torch

    if ":" in mode:
        from transformers import AutoModel, AutoTokenizer

        from passes.embedding import pooling

        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        model = AutoModel.from_pretrained(checkpoint, dtype=torch.float32).eval()
        batch = tokenizer(texts, padding=True, truncation=True, max_length=length, return_tensors="pt")
        from passes.lib import threads

        with torch.inference_mode(), threads.pinned():  # stored under a key: the same bytes on any machine
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            pooled = pooling.pool(pooling.load_function(mode), hidden, batch["attention_mask"])
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1) if normalize else pooled
        return pooled.numpy()
    from sentence_transformers import SentenceTransformer, models

    word = models.Transformer(str(checkpoint), max_seq_length=length)
    modules = [word, models.Pooling(word.get_embedding_dimension(), pooling_mode={"avg": "mean"}.get(mode, mode))]
    if normalize:
        modules.append(models.Normalize())
    st = SentenceTransformer(modules=modules, device="cpu")
    from passes.lib import threads

    with threads.pinned():
        return st.encode(texts, batch_size=len(texts), convert_to_numpy=True)


# The same pooling settings as the transform's: the same checks, and a pooling function's digest in the key.
hook("embedding_reference", "check")(transform.check)
hook("embedding_reference", "resolve")(transform.resolve)
