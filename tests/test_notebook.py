"""examples/quickstart.ipynb, executed (nbclient) on a tiny model and a scratch store; the CLI then finds its build cached."""
from __future__ import annotations

from conftest import ROOT, infer


def test_the_quickstart_notebook_runs_and_shares_its_store(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    store = tmp_path / "store"
    monkeypatch.setenv("PIPELINE_EXAMPLE_MODEL", "tiny_llama")
    monkeypatch.setenv("PIPELINE_STORE", str(store))
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "examples")}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "=== prompt 0 (3 tokens) ===" in text and "TTFT (prefill)" in text and "python -m pipeline.infer" in text
    assert "array([[1." in text  # each text's cosine with itself
    r = infer(store, "compile.ctx_len=256", "compile.prefill_seq_len=32", "prompt=My name is", "generation_len=24")
    assert r.rc == 0 and set(r.status().values()) == {"cached"}, r.err
