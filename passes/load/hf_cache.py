"""The local Hugging Face cache: where it is, and which commit a branch or tag points to there."""
from __future__ import annotations

import os
import re
from pathlib import Path

_COMMIT = re.compile(r"[0-9a-f]{40}")


def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps models, by the same environment rules it uses."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def repo_cache_dir(hf_id: str) -> Path:
    return hf_cache_dir() / ("models--" + hf_id.replace("/", "--"))


def is_commit(revision: str) -> bool:
    return bool(_COMMIT.fullmatch(revision or ""))


def cached_commit(hf_id: str, revision: str) -> str | None:
    """The commit a branch or tag points to in the local cache; a commit hash is itself."""
    if is_commit(revision):
        return revision
    ref = repo_cache_dir(hf_id) / "refs" / revision
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    return commit if is_commit(commit) else None


def snapshot_dir(hf_id: str, commit: str) -> Path:
    return repo_cache_dir(hf_id) / "snapshots" / commit
