"""Pass `package`: program files + tokenizer + manifest.json (digests, resolved config, versions)."""
from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from pipeline.pass_api import Needs, cfg_field, register_pass

MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
# What a runtime needs from the checkpoint: configuration and tokenizer, never the weights.
CHECKPOINT_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
    "tokenizer.model", "spiece.model", "*.tiktoken", "chat_template.jinja", "chat_template.json",
)
VERSIONED = ("onnxruntime", "onnx", "torch", "transformers", "onnxscript")


@dataclass(frozen=True)
class PackageParams:
    model_name: str = cfg_field("model.name", "")
    model_source: str = cfg_field("model.source", "")
    model_hf_id: Optional[str] = cfg_field("model.hf_id", None)
    target: str = cfg_field("hw.target", "cpu")
    num_cores: int = cfg_field("hw.num_cores", 2)
    num_devices: int = cfg_field("hw.num_devices", 1)
    hw_version: str = cfg_field("hw.hw_version", "ai100")
    mxfp6_matmul: bool = cfg_field("hw.mxfp6_matmul", False)
    kv_cache_dtype: str = cfg_field("hw.kv_cache_dtype", "float16")
    export_dynamo: bool = cfg_field("export.dynamo", False)
    export_opset: int = cfg_field("export.opset", 17)
    rewrite_rules: tuple[str, ...] = cfg_field("rewrite.rules", ("optimize",))
    batch_size: int = cfg_field("compile.batch_size", 1)
    prefill_seq_len: int = cfg_field("compile.prefill_seq_len", 32)
    ctx_len: int = cfg_field("compile.ctx_len", 256)
    full_batch_size: Optional[int] = cfg_field("compile.full_batch_size", None)
    num_speculative_tokens: Any = cfg_field("compile.num_speculative_tokens", None)


def resolved_config(params: PackageParams) -> dict[str, Any]:
    """The params back under their config paths (no local paths: the manifest must be portable)."""
    from dataclasses import fields

    p = asdict(params)
    nested: dict[str, Any] = {}
    for f in fields(params):
        group, key = f.metadata["cfg"].split(".", 1)
        value = p[f.name]
        nested.setdefault(group, {})[key] = list(value) if isinstance(value, tuple) else value
    return nested


@register_pass("package", params=PackageParams, deps=("onnx", "onnxruntime", "torch", "transformers"),
               materialize=True, code=("passes.files", "passes.qpc_package", "passes.specializations"), needs=Needs(modules=("onnxruntime", "transformers")))
def package(inputs: Mapping[str, Any], params: PackageParams, out: Path) -> dict[str, Any]:
    import json
    from importlib import metadata

    from passes.files import link_or_copy, sha256

    program, checkpoint = Path(inputs["program"]), Path(inputs["checkpoint"])
    for src in sorted(p for p in program.rglob("*") if p.is_file()):
        link_or_copy(src, out / src.relative_to(program))
    copied = []
    for src in sorted(p for p in checkpoint.iterdir() if p.is_file()):
        if any(fnmatch.fnmatch(src.name, pattern) for pattern in CHECKPOINT_FILES):
            link_or_copy(src, out / TOKENIZER_DIR / src.name)
            copied.append(src.name)
    if "config.json" not in copied:
        raise RuntimeError(f"package: the checkpoint has no config.json (files: {sorted(p.name for p in checkpoint.iterdir())})")
    _check_tokenizer(out / TOKENIZER_DIR)
    if params.target == "ai100":
        from passes.qpc_package import write_onnx_session, write_qconfig

        write_onnx_session(out)
        write_qconfig(out, checkpoint, resolved_config(params))

    files = {p.relative_to(out).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size}
             for p in sorted(out.rglob("*")) if p.is_file()}
    specs = json.loads((out / "specializations.json").read_text())["specializations"]
    manifest = {
        "format": 1,
        "config": resolved_config(params),
        "specializations": specs,
        "versions": {name: metadata.version(name) for name in VERSIONED},
        "files": files,
        "runtime": "python -m runtime <this dir> --prompt ...",
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return {"files": len(files), "bytes": sum(f["bytes"] for f in files.values())}


def _check_tokenizer(folder: Path) -> None:
    """The package must carry a tokenizer that loads on its own."""
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(folder)
    except Exception as e:
        raise RuntimeError(f"package: the copied tokenizer does not load: {type(e).__name__}: {e}") from e
