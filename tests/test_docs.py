"""The docs cannot drift: the site builds strictly, the README stays short, the configuration reference
holds every key with its meaning, and every example a user would copy runs (on tiny_llama), its
printed output matching what the page shows."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, copy_store

sys.path.insert(0, str(ROOT / "tools" / "docs"))

from examples import on_test_model  # noqa: E402  (tools/docs is not a package)

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"console", "shell", "bash", "sh", "python"}  # the blocks a user would copy and run
NOT_RUN = '!!! note "Not run by the tests: '
REGION = re.compile(r"^<!-- \[\[\[cog (.*?) \]\]\] -->\n(.*?)^<!-- \[\[\[end\]\]\] -->\n", re.M | re.S)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"


def test_site_builds_strict(tmp_path):
    """No broken link, anchor or API reference; the generated configuration reference is in the site."""
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                       cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    reference = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    assert "compile.ctx_len" in reference and "hw.mxfp6_matmul" in reference
    assert "open_session" in (tmp_path / "site" / "reference" / "api" / "index.html").read_text()


def test_config_reference_has_every_key_with_a_meaning():
    """Every leaf of the composed default config (and the cpu and ai100 hw keys) is in the reference,
    each with a meaning: a new schema field without a comment fails here."""
    from omegaconf import OmegaConf

    from config_reference import render
    from pipeline.api import compose

    text = render()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([\w.]+)` \|.*\| ([^|]*) \|$", text, re.M)}
    keys = set()

    def leaves(prefix: str, node) -> None:
        if isinstance(node, dict) and node and prefix not in ("pipeline.stages", "model.hf_config", "model.adapters"):
            for k, v in node.items():
                leaves(f"{prefix}.{k}" if prefix else k, v)
        else:
            keys.add(prefix)

    for overrides in ([], ["hw=ai100_16c"]):
        leaves("", OmegaConf.to_container(compose(overrides), resolve=False))
    keys -= {"draft_model", "hydra"}
    assert keys - rows.keys() == set(), "keys missing from the reference"
    assert [k for k, meaning in rows.items() if not meaning.strip()] == [], "keys without a meaning (comment the field)"


def fenced_blocks(text: str) -> list[tuple[int, str]]:
    """(line index, language) of every fenced block's opening line."""
    blocks, inside = [], False
    for i, line in enumerate(text.splitlines()):
        if line.startswith("```"):
            if not inside:
                blocks.append((i, line[3:].strip()))
            inside = not inside
    return blocks


def test_every_runnable_block_runs_or_says_why():
    """A console, shell or Python block is printed by an example (cog) or follows a visible not-run note."""
    unexplained = []
    for page in PAGES:
        text = page.read_text()
        lines = text.splitlines()
        generated = {text[:m.start(2)].count("\n") for m in REGION.finditer(text)}
        for i, lang in fenced_blocks(text):
            if lang not in RUNNABLE or i in generated:
                continue
            before = [line for line in lines[max(0, i - 3):i] if line.strip()]
            if not (before and before[-1].startswith(NOT_RUN)):
                unexplained.append(f"{page.relative_to(ROOT)}:{i + 1}")
    assert unexplained == []


def normalized(text: str) -> str:
    """What must not change: digests, numbers (times, sizes, ids) and column padding aside."""
    text = re.sub(r"\d{8}-\d{6}-\d+-[0-9a-f]{6}", "<run>", text)  # a run's folder: time, pid, random
    text = re.sub(r"[0-9a-f]{8,}", "<hex>", text)
    text = re.sub(r"(code of pass \w+ changed: )[^;)\]]*", r"\1<modules>", text)  # which modules follows the history
    text = re.sub(r"\d+", "0", text)
    return re.sub(r"[ \t]+", " ", text)


def compared(code: str) -> bool:
    """Whether a cog call's output must match the page's: its commands (or Python source, its string
    arguments) run as printed, and its jobs do not print at once (``parallel=True``)."""
    call = ast.parse(code).body[0].value
    parallel = any(k.arg == "parallel" and k.value.value for k in call.keywords)
    return on_test_model(tuple(a.value for a in call.args if isinstance(a, ast.Constant))) and not parallel


def test_examples_run_and_their_output_matches(tmp_path, built_store):
    """cog re-runs every example of every page on tiny_llama, in page order, from a copy of the built
    store; an example that fails fails here, and the output of the examples already on tiny_llama
    must match the page's (numbers and digests aside; not the interleaved lines of parallel jobs)."""
    pages = tmp_path / "pages"
    pages.mkdir()
    copies = []
    for page in PAGES:
        copies.append(pages / f"{len(copies):02d}-{page.name}")  # keeps cog's order: README, then docs/
        copies[-1].write_text(page.read_text())
    run_env = {**env(), "DOCS_EXAMPLES_DIR": str(tmp_path / "work"), "DOCS_EXAMPLES_MODEL": "tiny_llama",
               "DOCS_EXAMPLES_SEED": str(copy_store(built_store, tmp_path / "seed"))}
    p = subprocess.run([sys.executable, "-m", "cogapp", "-r", "-I", str(ROOT / "tools" / "docs"),
                        "-p", "from examples import console, mermaid, python", *map(str, copies)],
                       cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout + p.stderr[-5000:]
    drifted = []
    for page, copy in zip(PAGES, copies):
        shown, printed = REGION.findall(page.read_text()), REGION.findall(copy.read_text())
        assert [code for code, _ in shown] == [code for code, _ in printed]
        for (code, before), (_, after) in zip(shown, printed):
            if compared(code) and normalized(before) != normalized(after):
                drifted.append(f"{page.name}: {code}\n--- page\n{before}--- now\n{after}")
    assert drifted == [], "outputs changed: run make docs-outputs\n" + "\n".join(drifted)
