"""``python -m pipeline.embed texts=[...] [build overrides]``: build or reuse an embedding package, then embed.

Takes the build's config groups and keys (``model=... hw=... compile.seq_len=... embedding.*``;
by default all-MiniLM-L6-v2, ``pipeline=embedding``) and builds only what the package needs.
Texts come from exactly one of ``texts=[...]`` or ``texts_file=`` (one a line, or a .json list
of strings). They are batched by the package's batch size, each batch run in the shortest
compiled length that holds it (runtime/embed.py). The run directory gets ``embeddings.npy``
[texts, hidden] float32 in the given order, ``embed_info.json`` (throughput: sentences/s,
tokens/s) and ``summary.json``. Exit codes as ``python -m pipeline``: 0, 1 a stage failed, 2 bad input.
"""
from __future__ import annotations

import json
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from pipeline.cli import finish_job, job_dir
from pipeline.config import register
from pipeline.infer import check_runnable, read_texts
from pipeline.pass_api import UserError

CONFIG = "embed"
register(CONFIG)
EMBEDDINGS = "embeddings.npy"
INFO = "embed_info.json"


@hydra.main(config_path="../conf", config_name=CONFIG, version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any]:
    run_dir = job_dir(cfg)
    try:
        texts = read_texts(cfg, (None, "texts", "texts_file"))
        from pipeline.api import build

        result = build(cfg, echo=lambda line: print(line, file=sys.stderr, flush=True), run_dir=run_dir,
                       goals=("package",), check_packages=True)
    except UserError as exc:
        return finish_job(run_dir, 2, {"error": str(exc)}, str(exc))
    summary: dict[str, Any] = {**result.summary()}
    if not result.ok or result.package is None:
        return finish_job(run_dir, 1, summary, None)
    import numpy as np

    from runtime import package_format as fmt
    from runtime.embed import Embedder

    manifest = fmt.read_manifest(result.package)
    if manifest.kind != fmt.EMBEDDING:
        message = f"pipeline: a {manifest.kind} package is not an embedding model; allowed: pipeline=embedding"
        return finish_job(run_dir, 2, {**summary, "error": message}, message)
    try:  # the package's own target's session runs it (a device package on its device)
        check_runnable(result.package)
        embedder = Embedder(result.package, verify=False)  # the build checked the bytes of what it took from the store
    except UserError as e:
        return finish_job(run_dir, 2, {**summary, "error": str(e)}, str(e))
    except ImportError as e:
        message = f"hw.target: {manifest.target!r} cannot run its packages here; {e}"
        return finish_job(run_dir, 2, {**summary, "error": message}, message)
    embedder.embed(texts[:1])  # warm-up: the first run allocates ONNX Runtime's buffers
    run = embedder.embed(texts)
    run_dir.mkdir(parents=True, exist_ok=True)
    np.save(run_dir / EMBEDDINGS, run.embeddings)
    info = {"package": str(result.package), "model": cfg.model.name, "shape": list(run.embeddings.shape),
            "compiled_lengths": sorted(s.seq_len for s in embedder.program.specializations),
            "batch_size": embedder.batch_size, **run.metrics}
    (run_dir / INFO).write_text(json.dumps(info, indent=2) + "\n")
    m = run.metrics
    print(f"embedded {m['texts']} texts ({m['tokens']} tokens) into {run_dir / EMBEDDINGS} {tuple(run.embeddings.shape)}: "
          f"{m['sentences_per_s']} sentences/s, {m['tokens_per_s']} tokens/s; batches by compiled length "
          f"{m['batches_by_length']}", flush=True)
    return finish_job(run_dir, 0, {**summary, "embed_info": str(run_dir / INFO)}, None)


if __name__ == "__main__":
    from pipeline.cli import launch

    launch(main, CONFIG)
