"""Builds are reproducible: the same key gives the same bytes, whatever the thread count or the load.

The numbers an export bakes in (the rotary tables GroupQueryAttention reads, the traced graph)
are computed on one torch thread whatever the process set; and tiny_llama, built in fresh
stores on one and on two OpenMP threads and under a busy CPU (with OMP_DYNAMIC, libgomp sizes
its thread teams by the load average), gives the same digest at every stage (validate's
record holds the package's speed too: only its verdict is compared).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

import pytest

from conftest import ROOT, run_pipeline

torch = pytest.importorskip("torch")

from passes.export import ExportParams, export  # noqa: E402
from passes.lib import threads  # noqa: E402
from passes.lib.hf_decoder import decoder_of, modeling_module  # noqa: E402
from passes.transforms import gqa  # noqa: E402
from passes.transforms.static_kv import build_wrapper  # noqa: E402
from passes.validate import VALIDATION  # noqa: E402

# conf/model/tiny_llama.yaml's architecture with a small vocabulary (fast).
HF_CONFIG = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
                 tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
BUSY_LOOPS = 3  # on top of the build, on a 2-core machine: every core contended


@pytest.fixture
def two_threads():
    """The process on two intra-op threads (as a 2-core machine runs it by default), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def model():
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **HF_CONFIG), dtype=torch.float32)
    hf.set_attn_implementation("eager")
    return hf.eval()


def threads_seen(module: torch.nn.Module) -> list[int]:
    """torch's thread count at every later call of ``module``."""
    seen: list[int] = []
    module.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    return seen


def test_pinned_restores_the_thread_count_after_an_error(two_threads):
    with pytest.raises(ValueError), threads.pinned():
        assert torch.get_num_threads() == threads.THREADS
        raise ValueError("inside")
    assert torch.get_num_threads() == 2


def test_rotary_tables_are_computed_on_one_thread(two_threads, model):
    seen = threads_seen(decoder_of(model).rotary_emb)
    tables = gqa.rope_tables(model, modeling_module(model), 16, HF_CONFIG["max_position_embeddings"])
    assert tables is not None and tables[0].shape == (512, 8)
    assert seen == [threads.THREADS]
    assert torch.get_num_threads() == 2


def test_the_export_traces_on_one_thread(two_threads, model, tmp_path):
    wrapper = build_wrapper(model, attention="gqa")
    assert wrapper.gqa_rotary  # the tables are in the graph
    seen = threads_seen(wrapper)
    export({"model": wrapper}, ExportParams(attention="gqa"), tmp_path)
    assert seen and set(seen) == {threads.THREADS}
    assert torch.get_num_threads() == 2


def built(store, **env: str) -> dict[str, Any]:
    """Every stage's digest in a build of tiny_llama into a fresh ``store``, in a process with ``env``
    (validate's too: how fast the package ran is its record's, not its tree's)."""
    r = run_pipeline(store, env=env)
    assert r.rc == 0, r.out[-2000:] + r.err[-2000:]
    assert all(s["status"] == "ran" for s in r.summary["stages"]), r.status()
    digests: dict[str, Any] = {s["name"]: s["digest"] for s in r.summary["stages"]}
    verdict = json.loads((store / "trees" / digests["validate"] / VALIDATION).read_text())
    assert verdict["passed"] and "metrics" not in verdict
    return digests


def busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def test_fresh_builds_agree_across_thread_counts_and_load(tmp_path):
    runs = {f"{n} thread(s)": built(tmp_path / f"threads-{n}", OMP_NUM_THREADS=str(n)) for n in (1, 2)}
    loops = busy_loops(BUSY_LOOPS)
    try:
        runs["loaded"] = built(tmp_path / "loaded", OMP_NUM_THREADS="2", OMP_DYNAMIC="true")
    finally:
        for p in loops:
            p.kill()
            p.wait()
    first = runs["1 thread(s)"]
    assert first["export"] and first["package"]
    for name, digests in runs.items():
        assert digests == first, f"{name}: {digests} != {first}"
    verify = subprocess.run([sys.executable, "-m", "pipeline.store", "--root", str(tmp_path / "loaded"), "verify"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and "0 problems" in verify.stdout, verify.stdout + verify.stderr
    for store in ("threads-1", "threads-2", "loaded"):
        shutil.rmtree(tmp_path / store)
