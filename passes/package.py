"""Pass `package`: program files + tokenizer + manifest.json, in the runtime's package format.

The manifest (runtime.package_format.Manifest) holds the program as the compile stage
described it (signature, specializations with roles, backend files), the model's identity,
the settings it was built with, library versions and every file's sha256.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from pipeline.pass_api import Needs, cfg_field, register_pass

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
    export_dynamo: bool = cfg_field("export.dynamo", False)
    export_opset: int = cfg_field("export.opset", 17)
    rewrite_rules: tuple[str, ...] = cfg_field("rewrite.rules", ("optimize",))


@register_pass("package", params=PackageParams, deps=("onnx", "onnxruntime", "torch", "transformers"),
               materialize=True, needs=Needs(modules=("onnxruntime", "transformers")), provides="package")
def package(inputs: Mapping[str, Any], params: PackageParams, out: Path) -> dict[str, Any]:
    from importlib import metadata

    from passes.lib.files import copy_tree, link_or_copy
    from runtime import package_format as fmt

    compiled, checkpoint = Path(inputs["program"]), Path(inputs["checkpoint"])
    program = fmt.read_program(compiled)
    copy_tree(compiled, out)
    (out / fmt.PROGRAM).unlink()  # the manifest holds it
    copied = []
    for src in sorted(p for p in checkpoint.iterdir() if p.is_file()):
        if any(fnmatch.fnmatch(src.name, pattern) for pattern in CHECKPOINT_FILES):
            link_or_copy(src, out / fmt.TOKENIZER_DIR / src.name)
            copied.append(src.name)
    if "config.json" not in copied:
        raise RuntimeError(f"package: the checkpoint has no config.json (files: {sorted(p.name for p in checkpoint.iterdir())})")
    _check_tokenizer(out / fmt.TOKENIZER_DIR)
    if program.backend == fmt.QAIC:
        from passes.targets.ai100.package import write_qconfig

        write_qconfig(out, checkpoint, program, params.rewrite_rules)

    model = {"name": params.model_name, "source": params.model_source, "hf_id": params.model_hf_id}
    config = {"model": model, "export": {"dynamo": params.export_dynamo, "opset": params.export_opset},
              "rewrite": {"rules": list(params.rewrite_rules)}, **program.build}
    manifest = fmt.Manifest(
        kind=program.signature.kind, model=model, target=program.build.get("hw", {}).get("target", "?"), program=program,
        config=config, versions={name: metadata.version(name) for name in VERSIONED}, files=fmt.file_entries(out))
    fmt.write_manifest(out, manifest)
    return {"files": len(manifest.files), "bytes": sum(f["bytes"] for f in manifest.files.values())}


def _check_tokenizer(folder: Path) -> None:
    """The package must carry a tokenizer that loads on its own."""
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(folder)
    except Exception as e:
        raise RuntimeError(f"package: the copied tokenizer does not load: {type(e).__name__}: {e}") from e
