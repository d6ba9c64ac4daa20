"""File helpers shared by the passes: link-or-copy of read-only trees, sha256 of files."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link src to dst (store files are immutable, so sharing is safe); copy across devices."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def sha256(path: Path) -> str:
    """The file's sha256, as the store computes it (one hasher for the whole project)."""
    from pipeline.store.digests import hash_file

    return hash_file(path)
