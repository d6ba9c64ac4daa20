"""``python -m pipeline.publish <build overrides> to=<URL> [name=...]``: build (validated) or reuse a package, publish it.

``python -m pipeline.publish --list <URL>`` prints what is published at URL, one package a line:
name (what ``python -m pipeline.fetch <URL>/<name> <dir>`` takes), model, target, key, created, size;
an entry that fails the publication schema is skipped with one ``warning:`` line on stderr.

The whole pipeline runs, validation included: only a package that passed is published. With
it goes its provenance: the resolved config (without the store's and the destination's
settings, where credentials may be), the package key and every stage's key, library and
compiler versions, the validation, and the project's git commit when it runs from a checkout.
The layout and its guarantees are pipeline.store.publications'. Exit codes as ``python -m
pipeline``: 0, 1 a stage failed (nothing published) or the upload failed, 2 bad input.
"""
from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline.cli import finish_job, job_dir
from pipeline.config import register
from pipeline.pass_api import UserError

CONFIG = "publish"
register(CONFIG)
PROJECT = Path(__file__).resolve().parent.parent
LOCAL_KEYS = ("store", "to", "to_options", "name", "hydra")  # machine settings and credentials: not provenance


def destination(cfg: Any) -> Any:
    """The Remote that ``to=`` names (checked, before any build); UserError in one line."""
    from pipeline.store.remote import Remote, check_url

    if cfg.to is None:
        raise UserError("to: None is not allowed; allowed: where to publish, an fsspec URL (s3://bucket/prefix, a folder)")
    try:
        check_url("to", cfg.to)
        options = OmegaConf.to_container(cfg.to_options, resolve=True) if cfg.get("to_options") else {}
        return Remote(cfg.to, options, push=True)
    except (ValueError, ImportError, TypeError) as e:
        raise UserError(str(e) if str(e).startswith("to:") else f"to: {cfg.to!r} is not allowed here ({e})") from None


@hydra.main(config_path="../conf", config_name=CONFIG, version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any]:
    from pipeline.store.publications import PublicationError, check_name

    run_dir = job_dir(cfg)
    try:
        remote = destination(cfg)
        if cfg.name is not None:
            check_name(cfg.name)
        from pipeline.api import build

        result = build(cfg, echo=lambda line: print(line, file=sys.stderr, flush=True), run_dir=run_dir,
                       check_packages=True)
    except (UserError, PublicationError) as exc:
        return finish_job(run_dir, 2, {"error": str(exc)}, str(exc))
    summary: dict[str, Any] = result.summary()
    if not result.ok or not result.packages:
        failed = next((s.name for s in result.stages if s.status == "failed"), "a stage")
        return finish_job(run_dir, 1, summary, f"not published: {failed} failed")
    published = []
    try:
        for role, package in result.packages.items():
            published.append(_publish_one(cfg, result, role, package, remote))
    except PublicationError as exc:
        return finish_job(run_dir, 2, {**summary, "published": published, "error": str(exc)}, str(exc))
    except Exception as exc:  # noqa: BLE001 - a failing destination: what was uploaded stays invisible
        message = f"publish to {remote} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return finish_job(run_dir, 1, {**summary, "published": published, "error": message}, message)
    return finish_job(run_dir, 0, {**summary, "published": published}, None)


def _publish_one(cfg: Any, result: Any, role: str, package: Path, remote: Any) -> dict[str, Any]:
    from pipeline.store import Store
    from pipeline.store.publications import default_name, publish

    from runtime import package_format as fmt

    store = Store(result.store_root)
    key = result.package_keys[role]
    record = store.records.read(key)
    manifest = fmt.read_manifest(package)
    if cfg.name is None:
        name = default_name(manifest.model["name"], manifest.target, key)
    else:  # a draft package published beside the model's gets the name and its role
        name = cfg.name if role == "model" else f"{cfg.name}-{role}"
    provenance = provenance_of(cfg, result, role, manifest)
    done = publish(remote, store, record, name, manifest.to_json(), provenance)
    print(f"published {done.name} to {done.url}: {done.files} files, {done.bytes / 1e6:.1f} MB; uploaded "
          f"{done.uploaded_bytes} bytes{'' if done.new else ' (already published)'}", flush=True)
    print(f"fetch with: python -m pipeline.fetch {done.url}/{done.name} <dir>", flush=True)
    return {"name": done.name, "url": done.url, "files": done.files, "bytes": done.bytes,
            "uploaded_bytes": done.uploaded_bytes, "new": done.new}


def provenance_of(cfg: Any, result: Any, role: str, manifest: Any) -> dict[str, Any]:
    """The resolved config (no machine settings), the keys, versions and compiler, the validation, the commit."""
    from pipeline.discovery import project_distribution
    from pipeline.target_api import find_target

    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in LOCAL_KEYS:
        config.pop(key, None)
    return {
        "config": config,
        "key": result.package_keys[role],
        "stages": {s.name: s.key for s in result.stages if s.role == role and s.key},
        "versions": {**manifest.versions, project_distribution(): _version()},
        "compiler": find_target(manifest.target).provenance(manifest.program, manifest.versions),
        "validation": result.validations.get(role),
        "git_commit": git_commit(),
    }


def git_commit() -> str | None:
    """The project's commit when it runs from a git checkout (``+dirty`` with local changes), else None."""
    try:
        head = subprocess.run(["git", "-C", str(PROJECT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(PROJECT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _version() -> str | None:
    from pipeline.discovery import project_distribution

    try:
        return metadata.version(project_distribution())
    except metadata.PackageNotFoundError:
        return None


def list_published(argv: list[str]) -> int:
    """``--list <URL>``: a line per package, a warning per entry that is not a publication; exit 2 for a bad URL."""
    from pipeline.store.publications import list_line, listing
    from pipeline.store.remote import Remote, check_url, shown

    if len(argv) != 1:
        print("error: --list: takes one URL (python -m pipeline.publish --list <URL>)", file=sys.stderr)
        return 2
    try:
        remote = Remote(check_url("--list", argv[0]))
        docs, skipped = listing(remote)
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: --list: {shown(argv[0])!r} cannot be read ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    for path, why in skipped:
        print(f"warning: {path}: skipped: {' '.join(why.split())}", file=sys.stderr)
    for doc in docs:
        print(list_line(doc))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--list"]:
        sys.exit(list_published(sys.argv[2:]))
    from pipeline.cli import launch

    launch(main, CONFIG)
