"""Content digests: of bytes, canonical JSON, files and trees (sha256). Portable: no paths, no stat."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CHUNK = 1 << 22


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def hash_json(obj: object) -> str:
    return hash_bytes(canonical_json(obj).encode())


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_files(root: Path) -> list[str]:
    """Relative paths of the regular files under root, sorted (symlinks are refused)."""
    out = []

    def unreadable(error: OSError) -> None:  # os.walk would skip the folder silently
        raise error

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames.sort()
        for name in dirnames + filenames:  # os.walk lists a link to a folder with the folders, and does not follow it
            p = Path(dirpath) / name
            if p.is_symlink():
                raise ValueError(f"{p}: a symbolic link (the store takes regular files only)")
        for name in filenames:
            p = Path(dirpath) / name
            out.append(p.relative_to(root).as_posix())
    return sorted(out)


def tree_digest(entries: dict[str, str]) -> str:
    """Digest of a tree from {relative path: file digest}."""
    return hash_bytes("".join(f"{rel}\0{d}\n" for rel, d in sorted(entries.items())).encode())
