"""Weights streamed from their source: the random checkpoint written module by module, and the export reading
the checkpoint by name into its external data, give the in-memory path's bytes; under a memory cap below the
model's fp32 size the streamed load, transform and export complete (and the in-memory build does not)."""
from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")

from passes.export import ExportParams, export  # noqa: E402
from passes.lib import safetensors_io, streamed_weights  # noqa: E402
from passes.load import random_weights, sources  # noqa: E402
from passes.transforms.static_kv import StaticKvParams, build_wrapper, static_kv  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = yaml.safe_load((ROOT / "conf/model/tiny_llama.yaml").read_text())["hf_config"]


def digests(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir()) if f.is_file()}


def streamed_checkpoint(folder: Path, config: dict, seed: int = 0, num_layers: int | None = None) -> Path:
    folder.mkdir()
    model = random_weights.stream(config, seed, torch.float32, folder, num_layers)
    sources.save_config(model, folder)
    return folder


@pytest.mark.parametrize("tied", [False, True])
def test_streamed_random_checkpoint_is_the_in_memory_one(tmp_path, tied):
    config = {**TINY, "tie_word_embeddings": tied}
    memory = random_weights.build(config, 0, torch.float32)
    memory.save_pretrained(tmp_path / "memory")
    streamed = streamed_checkpoint(tmp_path / "streamed", config)
    assert digests(tmp_path / "memory") == digests(streamed)
    names = set(safetensors_io.index(streamed))
    assert ("lm_head.weight" in names) is not tied  # a tied head is stored once, as save_pretrained does
    embed = memory.model.embed_tokens.weight
    assert 0.015 < float(embed.std()) < 0.025 and bool((memory.model.norm.weight == 1).all())  # the family's init
    other = streamed_checkpoint(tmp_path / "seed1", config, seed=1)
    assert digests(other)["model.safetensors"] != digests(streamed)["model.safetensors"]


def test_a_tensor_depends_on_its_name_and_the_seed_only(tmp_path):
    full = safetensors_io.index(streamed_checkpoint(tmp_path / "full", TINY))
    cut = safetensors_io.index(streamed_checkpoint(tmp_path / "cut", TINY, num_layers=1))
    assert not any(".layers.1." in n for n in cut) and any(".layers.1." in n for n in full)
    for name, entry in cut.items():
        assert torch.equal(safetensors_io.read(entry), safetensors_io.read(full[name])), name


@pytest.mark.parametrize("attention", ["gqa", "scatter"])
def test_streamed_export_is_the_in_memory_one(tmp_path, attention):
    from transformers import AutoModelForCausalLM

    folder = streamed_checkpoint(tmp_path / "ckpt", TINY)
    streamed = static_kv({"checkpoint": folder}, StaticKvParams(attention=attention, seed=0), None)
    assert len(getattr(streamed, streamed_weights.STREAMED)) == len(safetensors_io.index(folder))
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    in_memory = build_wrapper(loaded, attention=attention)
    params = ExportParams(attention=attention)
    for name, wrapper in (("streamed", streamed), ("memory", in_memory)):
        (tmp_path / name).mkdir()
        export({"model": wrapper}, params, tmp_path / name)
    assert digests(tmp_path / "streamed") == digests(tmp_path / "memory")


# A Llama of about 800 MB fp32 (11 layers of 60 MB), built in a child process whose data segment
# (RLIMIT_DATA: heap and private mappings; the imports alone take about 450 MB) is capped below that.
MID = {**TINY, "vocab_size": 16384, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 11,
       "num_attention_heads": 16, "num_key_value_heads": 4}
CAP = 680 * 2**20
CHILD = r"""
import json, sys, torch
from pathlib import Path
from passes.export import ExportParams, export
from passes.load import random_weights, sources
from passes.transforms.static_kv import StaticKvParams, static_kv
config, out = json.loads(sys.argv[1]), Path(sys.argv[2])
(out / "ckpt").mkdir(); (out / "onnx").mkdir()
sources.save_config(random_weights.stream(config, 0, torch.float32, out / "ckpt"), out / "ckpt")
wrapper = static_kv({"checkpoint": out / "ckpt"}, StaticKvParams(attention="gqa", seed=0), None)
export({"model": wrapper}, ExportParams(attention="gqa"), out / "onnx")
print("streamed: done", flush=True)
random_weights.build(config, 0, torch.float32)  # the in-memory build, under the same cap
print("in memory: done")
"""


def test_streamed_build_completes_under_a_cap_below_the_fp32_weights(tmp_path):
    fp32 = sum(p.numel() for p in random_weights.skeleton(MID, torch.float32).parameters()) * 4
    assert CAP < fp32

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (CAP, CAP))

    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(MID), str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, preexec_fn=cap)
    assert "streamed: done" in p.stdout, p.stderr[-3000:]
    assert (tmp_path / "onnx" / "model.onnx.data").stat().st_size >= fp32 * 0.99
    assert "in memory: done" not in p.stdout and "allocate memory" in p.stderr  # the cap bites the in-memory build
