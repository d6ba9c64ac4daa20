"""The docs' examples, run for real: cog prints them into the pages, the tests run them again.

A page shows a session between cog markers (HTML comments, invisible on the page)::

    <!-- [[[cog console("python -m pipeline model=tiny_llama") ]]] -->
    ```console
    $ python -m pipeline model=tiny_llama
    ...its output, as printed...
    ```
    <!-- [[[end]]] -->

``make docs-outputs`` runs every such command as written and prints what it printed, the
pages in order (the store of each working directory is its ``artifacts/``, the default
``store.root``). Sessions on tiny_llama alone run in a directory of their page, which starts from
one tiny_llama build; sessions naming a real model (or none: the default is SmolLM2) share one
directory across pages, so a real model is built once. With ``DOCS_EXAMPLES_MODEL=tiny_llama``
(the tests) the real models are replaced by it, so every example runs in seconds; the tiny_llama
sessions then run exactly as printed, from the same start, and the tests compare their output
with the page's.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_MODEL = "tiny_llama"
SHOWN_DIR = "/home/me/ai100-pipeline"  # the working directory as the pages show it
LINKED = ("tests", "bench", "examples")  # repository folders the examples name by relative path
PIPELINE_COMMAND = re.compile(r"\bpython -m pipeline(\.(infer|evaluate|publish|serve))?(?![\w.])( -m)?")
MODEL_VALUE = re.compile(r"\b(model|draft_model)=(\w+)")
REAL_MODELS = ("smollm2_135m", "smollm2_135m_draft")  # what the tests run on tiny_llama instead
MARK = "@@docs-example-exit@@"  # ends each command's output, with its exit code


def substituted(command: str, model: str | None) -> str:
    """``command`` on ``model``: the real models it names replaced, and ``model=`` added to a pipeline
    command that names none. Unchanged when ``model`` is None."""
    if not model:
        return command
    command = MODEL_VALUE.sub(lambda m: f"{m.group(1)}={model}" if m.group(2) in REAL_MODELS else m.group(0), command)
    command = re.sub(r"([\"'])(%s)\1" % "|".join(REAL_MODELS), rf"\g<1>{model}\g<1>", command)  # Python: "smollm2_135m"
    if PIPELINE_COMMAND.search(command) and not re.search(r"(^|\s)(model=|--list)", command):  # --list: no build
        command = PIPELINE_COMMAND.sub(lambda m: f"{m.group(0)} model={model}", command, count=1)
    return command


def on_test_model(commands: tuple[str, ...]) -> bool:
    """Whether the commands run as printed in the tests (they name no real model, and no default one)."""
    return all(substituted(c, TEST_MODEL) == c for c in commands)


def workdir(commands: tuple[str, ...], page: str, fresh: bool = False) -> Path:
    """The working directory of these commands, under ``DOCS_EXAMPLES_DIR`` (a scratch folder when unset).

    Commands on tiny_llama alone run in their page's own ``tiny-<page>/``, so what a page prints
    depends on that page alone; its store starts as a copy of ``DOCS_EXAMPLES_SEED`` (the tests'
    built store) or of one tiny_llama build. Other commands share ``real/`` (a real model is built
    once for all pages), or, from a ``fresh`` session on (a first run), their page's ``fresh-<page>/``."""
    base = Path(os.environ.get("DOCS_EXAMPLES_DIR") or Path(os.environ.get("TMPDIR", "/tmp")) / "ai100-docs-examples")
    if on_test_model(commands):
        return prepared(base / f"tiny-{page}", seed=os.environ.get("DOCS_EXAMPLES_SEED") or str(tiny_seed(base)))
    if fresh:
        shutil.rmtree(base / f"fresh-{page}", ignore_errors=True)
        _fresh_pages.add(page)
    if page in _fresh_pages:
        return prepared(base / f"fresh-{page}", seed=None)
    return prepared(base / "real", seed=os.environ.get("DOCS_EXAMPLES_SEED"))


_fresh_pages: set[str] = set()


def prepared(path: Path, seed: str | None) -> Path:
    """``path``, created on first use with the repository folders the examples name and a copy of ``seed`` as its store."""
    if not path.exists():
        path.mkdir(parents=True)
        for name in LINKED:
            (path / name).symlink_to(ROOT / name)
        if seed:
            subprocess.run(["cp", "-a", seed, str(path / "artifacts")], check=True)
    return path


def tiny_seed(base: Path) -> Path:
    """One tiny_llama build, the start of every page's tiny_llama store when the tests give none."""
    path = prepared(base / "tiny-seed", seed=None)
    if not (path / "artifacts").exists():
        [(rc, out)] = run([f"python -m pipeline model={TEST_MODEL}"], path)
        if rc:
            raise RuntimeError(out)
    return path / "artifacts"

def run(commands: list[str], cwd: Path, timeout: float = 1800) -> list[tuple[int, str]]:
    """The commands in one bash (variables carry over), ``python`` the running interpreter; per
    command its exit code and its output (stdout and stderr, as a terminal shows them)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}  # progress bars (stderr) are not what a page shows
    script = "exec 2>&1\n" + "".join(f"{c}\nrc=$?; printf '\\n{MARK} %d\\n' $rc; (exit $rc)\n" for c in commands)
    p = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout)
    results, lines = [], []
    shown = p.stdout.replace(str(cwd), SHOWN_DIR).replace(sys.prefix, f"{SHOWN_DIR}/.venv")  # warnings name the venv
    for line in shown.splitlines():
        if line.startswith(MARK + " "):
            results.append((int(line.split()[1]), "\n".join(lines).strip("\n")))
            lines = []
        else:
            lines.append(line)
    if len(results) != len(commands):
        raise RuntimeError(f"the shell stopped after {len(results)} of {len(commands)} commands:\n" + "\n".join(lines))
    return results


def session(commands: tuple[str, ...], expect: int | tuple[int, ...] = 0, fresh: bool = False) -> list[str]:
    """Run ``commands`` (on ``DOCS_EXAMPLES_MODEL`` when set); the lines showing them with their output.

    ``expect``: the exit code of every command, or one per command; another raises (the page
    would show a failure it does not mean). ``fresh``: start from an empty store (a first run)."""
    import cog  # the module cogapp provides to the code between its markers

    expected = expect if isinstance(expect, tuple) else (expect,) * len(commands)
    cwd = workdir(commands, Path(cog.inFile).stem, fresh)
    ran = [substituted(c, os.environ.get("DOCS_EXAMPLES_MODEL")) for c in commands]
    shown = []
    for command, actual, want, (rc, out) in zip(commands, ran, expected, run(ran, cwd)):
        if rc != want and command.strip() != "echo $?":
            raise RuntimeError(f"{actual!r} exited {rc}, expected {want}:\n{out[-3000:]}")
        shown += [f"$ {command}", *([out] if out else [])]
    return shown

def console(*commands: str, expect: int | tuple[int, ...] = 0, fresh: bool = False, slow: bool = False,
            parallel: bool = False) -> None:
    """cog's entry: a console block of the commands and their output. ``slow`` (minutes even on
    tiny_llama; the page says so in a note): the tests keep the block as printed, without running it.
    ``parallel``: jobs print at once, their lines interleaved; the tests run it, but compare no output."""
    import cog

    if slow and os.environ.get("DOCS_EXAMPLES_MODEL"):
        cog.out(cog.previous)
        return
    cog.outl("\n".join(["```console", *session(commands, expect, fresh), "```"]))


def mermaid(command: str) -> None:
    """cog's entry: the stage graph ``command`` prints (``pipeline.show_graph=true``), as a diagram."""
    import cog

    graph = session((command,))[1:]
    cog.outl("\n".join(["```mermaid", *graph, "```"]))


def python(code: str) -> None:
    """cog's entry: a Python example (run with ``python``, on ``DOCS_EXAMPLES_MODEL`` when set) and what it printed."""
    import cog

    source = substituted(code, os.environ.get("DOCS_EXAMPLES_MODEL"))
    [(rc, out)] = run([f"python - <<'DOCS_EXAMPLE_END'\n{source}\nDOCS_EXAMPLE_END"],
                      workdir((code,), Path(cog.inFile).stem))
    if rc:
        raise RuntimeError(f"the example exited {rc}:\n{out[-3000:]}")
    cog.outl("\n".join(["```python", code, "```", *(["", "It printed:", "", "```", out, "```"] if out else [])]))
