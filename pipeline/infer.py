"""``python -m pipeline.infer prompt="My name is" [build overrides]``: build or reuse the package, then generate.

Takes the build's config groups and keys (``model=... hw=... compile.*``) and builds only what
the package needs (no reference, no validation). Prompts come from exactly one of ``prompt=``,
``prompts=[...]`` or ``prompts_file=`` (one a line, or a .json list of strings); ``chat=true``
applies the model's chat template; ``generation_len`` bounds the new tokens; ``stream=true``
prints tokens as they come; ``sampling.*`` chooses them (greedy by default). The run
directory gets ``exec_info.json`` and ``summary.json``. Build progress goes to stderr, the
texts and metrics to stdout. Exit codes as ``python -m pipeline``: 0, 1 a stage or the
generation failed, 2 bad input.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline.cli import finish_job, job_dir
from pipeline.config import register
from pipeline.pass_api import UserError

CONFIG = "infer"
register(CONFIG)


def read_prompts(cfg: Any) -> list[str]:
    """The prompts from the one source given; UserError naming the key otherwise."""
    return read_texts(cfg, ("prompt", "prompts", "prompts_file"))


def read_texts(cfg: Any, keys: tuple[str | None, str, str]) -> list[str]:
    """Texts from exactly one of ``keys`` = (one text | None, a list, a file: one a line or a .json list)."""
    one, many, file = keys
    names = [k for k in keys if k]
    given = [k for k in names if cfg.get(k) is not None]
    if len(given) != 1:
        allowed = ([f"{one}=<text>"] if one else []) + [f"{many}=[<text>, ...]", f"{file}=<path> (one a line, or a .json list)"]
        raise UserError(f"{names[0]}: {'set with ' + ', '.join(given) if given else 'not set'}; allowed: exactly one of "
                        + ", ".join(allowed[:-1]) + " or " + allowed[-1])
    if one and cfg.get(one) is not None:
        texts = [cfg.get(one)]
    elif cfg.get(many) is not None:
        texts = list(cfg.get(many))
    else:
        texts = _texts_file(Path(cfg.get(file)), file)
    bad = next((i for i, p in enumerate(texts) if not (isinstance(p, str) and p)), None) if texts else 0
    if bad is not None:
        what = "[]" if not texts else f"entry {bad}, {_shown(texts[bad])},"
        raise UserError(f"{given[0]}: {what} is not allowed; allowed: one or more non-empty strings")
    return texts


def _shown(value: Any, limit: int = 60) -> str:
    """A value's repr cut to ``limit`` characters (an error line stays one short line)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _texts_file(path: Path, key: str) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{key}: {str(path)!r} cannot be read ({e.strerror}); allowed: a readable text or .json file") from None
    allowed = "a .json list of strings" if path.suffix == ".json" else "UTF-8 text, one prompt a line"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{key}: {str(path)!r} is not UTF-8 (byte {data[e.start]:#04x} at offset {e.start}); "
                        f"allowed: {allowed}") from None
    if "\0" in text:
        raise UserError(f"{key}: {str(path)!r} holds a NUL byte at offset {data.index(0)} (a binary file?); "
                        f"allowed: {allowed}")
    if path.suffix == ".json":
        try:
            texts = json.loads(text)
        except ValueError as e:
            raise UserError(f"{key}: {str(path)!r} is not valid JSON ({e}); allowed: {allowed}") from None
        except RecursionError:
            raise UserError(f"{key}: {str(path)!r} nests too deeply; allowed: {allowed}") from None
        if not isinstance(texts, list):
            raise UserError(f"{key}: {str(path)!r} holds a {type(texts).__name__}; allowed: {allowed}")
        return texts
    return [line for line in text.splitlines() if line.strip()]


def sampling_params(cfg: Any) -> Any:
    from runtime.sampling import SamplingParams

    params = SamplingParams(**OmegaConf.to_container(cfg.sampling, resolve=True))
    try:
        params.check()
    except ValueError as e:
        raise UserError(str(e)) from None
    return params


@hydra.main(config_path="../conf", config_name=CONFIG, version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any]:
    run_dir = job_dir(cfg)
    try:
        prompts = read_prompts(cfg)
        sampling = sampling_params(cfg)
        if cfg.spd.name != "none":  # before the build: speculative decoding is greedy
            from runtime.speculative import check_greedy

            try:
                check_greedy(sampling, cfg.spd.name)
            except ValueError as e:
                raise UserError(str(e)) from None
        check_generation(cfg)
        from pipeline.api import build

        result = build(cfg, echo=lambda line: print(line, file=sys.stderr, flush=True), run_dir=run_dir,
                       goals=("package",), roles=roles_of(cfg), check_packages=True)
    except UserError as exc:
        return finish_job(run_dir, 2, {"error": str(exc)}, str(exc))
    summary: dict[str, Any] = {**result.summary()}
    if not result.ok or result.package is None:
        return finish_job(run_dir, 1, summary, None)
    try:
        info = generate_with(cfg, result.package, prompts, sampling, result.packages.get("draft_model"),
                             verify=False)  # the build checked the bytes of what it took from the store
    except UserError as exc:
        return finish_job(run_dir, 2, {**summary, "error": str(exc)}, str(exc))
    except Exception as exc:  # noqa: BLE001 - a generation failure is reported like a stage failure
        (run_dir / "infer.error.txt").parent.mkdir(parents=True, exist_ok=True)
        (run_dir / "infer.error.txt").write_text("".join(traceback.format_exception(exc)))
        message = f"generation failed: {type(exc).__name__}: {exc}"
        return finish_job(run_dir, 1, {**summary, "error": message}, message)
    path = info.write(run_dir)
    print(info, flush=True)
    print(f"exec info: {path}", flush=True)
    return finish_job(run_dir, 0, {**summary, "exec_info": str(path)}, None)


def check_generation(cfg: Any) -> None:
    """``adapter`` and ``generation_len`` against the config, before any build; UserError in one line."""
    if cfg.adapter is not None and cfg.adapter not in (cfg.model.adapters or {}):
        raise UserError(f"adapter: {cfg.adapter!r} is not allowed; allowed: "
                        f"{', '.join(sorted(cfg.model.adapters or {})) or 'none (model.adapters is empty)'}")
    n = cfg.generation_len
    if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise UserError(f"generation_len: {n!r} is not allowed; allowed: an integer >= 1, or null")


def roles_of(cfg: Any) -> tuple[str, ...]:
    """The models a generation needs packages of: the draft too with spd=draft."""
    return ("model", "draft_model") if cfg.get("spd") is not None and cfg.spd.name == "draft" else ("model",)


def generate_with(cfg: Any, package: Path, prompts: list[str], sampling: Any, draft: Path | None = None,
                  tokenizer: Any = None, verify: bool | None = None) -> Any:
    """Generate with a built package as ``cfg`` says (spd, stream, generation_len, chat, adapter);
    the ExecInfo. UserError for what the package cannot do here. ``verify``: the runtime's check
    on load (False when the build has just checked the bytes)."""
    from runtime.textgen import Streamer, generate_texts
    from runtime.tokenizer import load_tokenizer

    session, draft_session = open_for_generation(package, verify, draft if cfg.spd.name == "draft" else None)
    program = session.program
    tokenizer = tokenizer or load_tokenizer(package)
    on_token = Streamer(tokenizer, len(prompts)) if cfg.stream else None
    generation_len = cfg.generation_len or program.ctx_len
    try:
        from runtime import adapters

        slot = adapters.slot_of(getattr(session, "adapters", {}), cfg.adapter)
        proposer = make_proposer(cfg, session, draft_session)
        k = OmegaConf.to_container(cfg.spd, resolve=True)["num_speculative_tokens"] if proposer else None
        key = next((k for k in ("prompt", "prompts", "prompts_file") if cfg.get(k) is not None), "prompts")
        info = generate_texts(session, tokenizer, package, prompts, generation_len, cfg.chat, sampling, on_token,
                              proposer, k, cfg.model.name, slot, key)
    except ValueError as e:  # a prompt that does not fit, a chat template the model lacks
        raise UserError(str(e)) from None
    if cfg.stream:
        print(flush=True)
    return info


def check_runnable(package: Path) -> Any:
    """The package's program; UserError when its target says it cannot run (e.g. planned, not compiled)."""
    from pipeline.target_api import find_target
    from runtime import package_format as fmt

    program = fmt.read_program(package)
    problem = find_target(program.target).runnable(package, program)
    if problem:
        raise UserError(problem)
    return program


def open_for_generation(package: Path, verify: bool | None, draft: Path | None = None) -> tuple[Any, Any]:
    """(session, draft session or None), each by its package's own target; UserError where the
    target cannot run the package here (not compiled, or its runtime absent)."""
    from runtime.sessions import open_session

    program = check_runnable(package)
    try:
        if draft is None:
            return open_session(package, verify=verify), None
        # two sessions taking turns on the same cores: no spinning threads
        return open_session(package, verify=verify, spinning=False), open_session(draft, verify=verify, spinning=False)
    except ImportError as e:
        raise UserError(f"hw.target: {program.target!r} cannot run its packages here; {e}") from None


def make_proposer(cfg: Any, session: Any, draft_session: Any = None) -> Any:
    """The spd scheme's proposer (runtime.speculative), or None for spd=none; ValueError on a misfit."""
    from runtime import speculative

    name = cfg.spd.name
    if name == "none":
        return None
    if name == "pld":
        return speculative.PromptLookup(cfg.spd.max_ngram_size)
    if name == "multiproj":
        return speculative.Projections(session.program.signature)
    draft = speculative.DraftModel(draft_session, cfg.draft_model.name)
    draft.check(session.program)
    return draft


if __name__ == "__main__":
    from pipeline.cli import launch

    launch(main, CONFIG)
