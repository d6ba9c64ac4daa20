"""File helpers shared by the passes: link-or-copy of read-only store trees."""
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


def copy_tree(src: Path, dst: Path) -> list[str]:
    """Link or copy every file under src to the same place under dst; the relative paths copied."""
    rels = []
    for path in sorted(p for p in Path(src).rglob("*") if p.is_file()):
        rel = path.relative_to(src)
        link_or_copy(path, Path(dst) / rel)
        rels.append(rel.as_posix())
    return rels
