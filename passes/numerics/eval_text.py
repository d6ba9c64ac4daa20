"""The evaluation text of the teacher-forced gate: a user's file, or English prose from an installed package.

The default is the text of Python's own reference topics (``pydoc_data.topics``, shipped with
every CPython: about 465 kB of English prose and code, PSF license), read where it is installed
and never copied into this repository. Its digest enters the key, so a different Python whose
topics differ makes a new validation, and the same text reuses it.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

DEFAULT = "python:pydoc_data.topics"


def read_text(path: str | None) -> str:
    """The evaluation text: ``path``'s contents (UTF-8), or the default (``path`` None)."""
    if path is None:
        from pydoc_data.topics import topics

        return "\n\n".join(topics[name] for name in sorted(topics))
    return Path(path).expanduser().read_text(encoding="utf-8")


def describe(path: str | None) -> str:
    return DEFAULT if path is None else str(path)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=None)
def digest(path: str | None) -> str:
    """sha256 of the evaluation text at ``path`` (the default for None), read once per process: the
    resolve hooks of every stage that reads the text ask for it on every run, cached ones too."""
    return sha256(read_text(path))
