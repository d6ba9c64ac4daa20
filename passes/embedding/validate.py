"""Pass `validate_embedding`: the package's embeddings of the reference texts against sentence-transformers'.

A hard gate: the cosine similarity of every text's embedding with the reference's must be at
least ``validate.min_cosine`` (default by the package's numerics: 0.9999 for fp32, 0.998 for int8
weights, 0.93 for int4; all-MiniLM-L6-v2 gives 0.99904 and 0.94608 with round-to-nearest blocks of
32), embedded in one batch and alone (which runs
the shorter compiled lengths too), or the stage fails (exit 1). The package runs
through runtime/embed.py, as users run it: an AI 100 package's ONNX (the exact graph handed to
the compiler) at its fixed shapes where no device is.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from pipeline.pass_api import (
    Needs, Output, StageFailure, UserError, cfg_field, config_schema, find_target, hook, register_pass,
)

VALIDATION = "validation.json"


@config_schema("validate")
@dataclass
class EmbeddingGate:
    """validate.min_cosine: an embedding package's gate (pipeline=embedding)."""

    # every reference text's cosine similarity with sentence-transformers'; null: by the package's numerics
    min_cosine: Optional[float] = None


MIN_COSINE = {"float32": 0.9999, "int8": 0.998, "int4": 0.93}  # by MatMul weights


@dataclass(frozen=True)
class ValidateEmbeddingParams:
    min_cosine: Optional[float] = cfg_field(EmbeddingGate, "min_cosine")


@register_pass("validate_embedding", params=ValidateEmbeddingParams, deps=("onnxruntime", "transformers"),
               materialize=True, needs=Needs(modules=("onnxruntime", "transformers")), provides=Output.validation)
def validate_embedding(inputs: Mapping[str, Any], params: ValidateEmbeddingParams, out: Path) -> dict[str, Any]:
    import numpy as np

    from passes.embedding.reference import EMBEDDINGS, REFERENCE
    from runtime.embed import Embedder

    package, reference = Path(inputs["package"]), Path(inputs["reference"])
    ref = json.loads((reference / REFERENCE).read_text())
    want = np.load(reference / EMBEDDINGS)
    embedder = Embedder(package, onnx_view=True)
    if embedder.max_length != ref["max_length"]:
        raise RuntimeError(f"validate_embedding: the reference cut texts at {ref['max_length']} tokens, the package "
                           f"at {embedder.max_length}")
    # Batched as users run it, and each text alone (so every compiled length that fits it runs).
    runs = [embedder.embed(ref["texts"]), *(embedder.embed([text]) for text in ref["texts"])]
    batched, alone = runs[0].embeddings, np.concatenate([r.embeddings for r in runs[1:]])

    def cosines(got: Any) -> Any:
        return (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))

    cosine = np.minimum(cosines(batched), cosines(alone))
    worst = int(np.argmin(cosine))
    numerics = find_target(embedder.program.target).numerics(embedder.program.build)
    bound = params.min_cosine if params.min_cosine is not None else \
        MIN_COSINE.get(numerics.matmul_weights if numerics else "float32", MIN_COSINE["float32"])
    result = {"passed": bool(cosine.min() >= bound), "target": embedder.program.validation_target,
              "texts_compared": len(cosine), "min_cosine": float(cosine.min()), "min_cosine_allowed": bound,
              "max_abs_diff": float(max(np.abs(batched - want).max(), np.abs(alone - want).max())),
              "lengths_used": sorted({n for r in runs for n in r.lengths})}
    (out / VALIDATION).write_text(json.dumps({**result, "cosine": [float(c) for c in cosine],
                                              "reference_by": ref["by"], "pooling": ref["pooling"],
                                              "normalize": ref["normalize"]}, indent=2) + "\n")
    if not result["passed"]:
        raise StageFailure(f"validate_embedding: text {worst} has cosine similarity {cosine[worst]:.6f} with the "
                           f"reference, below validate.min_cosine {bound}", result=result)
    return result


@hook("validate_embedding", "check")
def check(params: ValidateEmbeddingParams, facts: Any = None) -> None:
    c = params.min_cosine
    if c is None:
        return
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1:
        raise UserError(f"validate.min_cosine: {c!r} is not allowed; allowed: a number in (0, 1]")
