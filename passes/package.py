"""Pass `package`: program files + tokenizer + manifest.json, in the runtime's package format.

The manifest (runtime.package_format.Manifest) holds the program as the compile stage
described it (signature, specializations with roles, its files), the target that opens it, the
model's identity, the settings it was built with, library versions and every file's sha256.
What a target's package holds beyond that (its plugin's ``package_files``) is the target's.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from pipeline.pass_api import REQUIRED, Needs, Output, cfg_field, find_target, hook, register_pass

# What a runtime needs from the checkpoint: configuration and tokenizer, never the weights.
CHECKPOINT_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
    "tokenizer.model", "spiece.model", "*.tiktoken", "chat_template.jinja", "chat_template.json",
)
VERSIONED = ("onnxruntime", "onnx", "torch", "transformers", "onnxscript")


@dataclass(frozen=True)
class PackageParams:
    # Provenance for the manifest: other passes' keys, their owners' schemas give the values.
    model_name: str = cfg_field("model.name", REQUIRED)
    model_source: str = cfg_field("model.source", REQUIRED)
    model_hf_id: Optional[str] = cfg_field("model.hf_id", REQUIRED)
    export_dynamo: bool = cfg_field("export.dynamo", REQUIRED)
    export_opset: int = cfg_field("export.opset", REQUIRED)
    rewrite_rules: tuple[str, ...] = cfg_field("rewrite.rules", REQUIRED)
    adapters: Any = cfg_field("model.adapters", REQUIRED, kind="paths")  # LoRA weights enter here, not before
    target: str = cfg_field("hw.target", REQUIRED, kind="target")  # its plugin may add files


@register_pass("package", params=PackageParams, deps=("onnx", "onnxruntime", "torch", "transformers"),
               materialize=True, needs=Needs(modules=("onnxruntime", "transformers")), provides=Output.package)
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
    if any(v.role == fmt.LORA_WEIGHT for v in program.signature.inputs):
        _write_adapters(out, program.signature, dict(params.adapters or {}))
    model = {"name": params.model_name, "source": params.model_source, "hf_id": params.model_hf_id}
    config = {"model": model, "export": {"dynamo": params.export_dynamo, "opset": params.export_opset},
              "rewrite": {"rules": list(params.rewrite_rules)}, **program.build}
    find_target(program.target).package_files(out, checkpoint, program, config)
    manifest = fmt.Manifest(
        kind=program.signature.kind, model=model, target=program.target, program=program,
        config=config, versions={name: metadata.version(name) for name in VERSIONED}, files=fmt.file_entries(out))
    fmt.write_manifest(out, manifest)
    return {"files": len(manifest.files), "bytes": sum(f["bytes"] for f in manifest.files.values())}


@hook("package", "owned")
def external_data(out: Path) -> set[str]:
    """The files the package's ONNX graphs keep their tensors in (external data): each is a file of
    its own in the store, not a hard link to cas/, since the onnx library refuses external data
    with several links (a "hard link attack")."""
    import onnx

    owned = set()
    for graph in sorted(out.rglob("*.onnx")):
        for tensor in _tensors(onnx.load(str(graph), load_external_data=False).graph):
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                location = next(e.value for e in tensor.external_data if e.key == "location")
                owned.add(str((graph.parent / location).relative_to(out)))
    return owned


def _tensors(graph: Any) -> Any:
    """Every tensor of a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def _write_adapters(out: Path, signature: Any, adapters: dict[str, str]) -> None:
    """adapters.safetensors (every adapter's weights stacked by slot) and adapters.json (name -> slot)."""
    import json

    from safetensors.numpy import save_file

    from passes.transforms import lora
    from runtime import adapters as rt

    shapes = {v.name: v.shape for v in signature.inputs}
    modules = [(v.name.removeprefix("lora_A."), int(v.shape[1]), int(shapes["lora_B." + v.name.removeprefix("lora_A.")][2]))
               for v in signature.inputs if v.name.startswith("lora_A.")]
    rank, slots = int(signature.dims["lora_rank"]), int(signature.dims["lora_slots"])
    if len(adapters) > slots - 1:
        raise RuntimeError(f"package: {len(adapters)} adapters for a graph with {slots - 1} adapter slots")
    have_rank, have_targets = lora.signature_of(adapters)
    if have_rank > rank or not {m.rsplit(".", 1)[-1] for m, _, _ in modules} >= set(have_targets):
        raise RuntimeError(f"package: the adapters (rank {have_rank}, targets {list(have_targets)}) do not fit the graph's "
                           f"LoRA inputs (rank {rank})")
    save_file(lora.stack(adapters, modules, rank, slots), str(out / rt.WEIGHTS))
    index = {"slots": {name: i for i, name in enumerate(adapters, start=1)}, "rank": rank,
             "max_adapters": slots - 1, "modules": [m for m, _, _ in modules]}
    (out / rt.INDEX).write_text(json.dumps(index, indent=1) + "\n")


def _check_tokenizer(folder: Path) -> None:
    """The package must carry a tokenizer that loads on its own."""
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(folder)
    except Exception as e:
        raise RuntimeError(f"package: the copied tokenizer does not load: {type(e).__name__}: {e}") from e
