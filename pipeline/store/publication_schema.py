"""What a publication's manifest (``<URL>/packages/<name>.json``) may hold: every field, its type, what is allowed.

``check`` takes the whole document before anything of it is used: fetching checks it before
writing anything, ``pipeline.publish --list`` before listing an entry. A failure is one line
naming the field, its value (shortened) and what is allowed. Booleans are not integers here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Callable

from pipeline.store.digests import tree_digest

FORMAT = 1
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NAME_ALLOWED = "1 to 128 of A-Z a-z 0-9 . _ -, beginning with a letter or digit"
FILE_ID = re.compile(r"[0-9a-f]{64}(\.x)?")
HEX64 = re.compile(r"[0-9a-f]{64}")


class Invalid(ValueError):
    """A document that is not a publication: ``field: value is not allowed; allowed: ...``."""


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any) -> bool:  # printed by --list: one line, no control characters
    return isinstance(value, str) and 0 < len(value) <= 256 and value.isprintable()


def _hex64(value: Any) -> bool:
    return isinstance(value, str) and HEX64.fullmatch(value) is not None


@dataclass(frozen=True)
class Field:
    ok: Callable[[Any], bool]
    allowed: str


_TEXT = Field(_text, "a string of 1 to 256 printable characters")
_HEX = Field(_hex64, "a sha256: 64 of 0-9 a-f")
SCHEMA: dict[str, Field] = {
    "format": Field(lambda v: is_int(v) and v == FORMAT, f"{FORMAT} (the format this version reads)"),
    "name": Field(lambda v: isinstance(v, str) and NAME.fullmatch(v) is not None, NAME_ALLOWED),
    "model": _TEXT, "target": _TEXT, "kind": _TEXT,
    "key": _HEX, "digest": _HEX,
    "created": _TEXT,
    "bytes": Field(lambda v: is_int(v) and v >= 0, "a non-negative integer"),
    "files": Field(lambda v: isinstance(v, dict), "an object {path: [file id, size]}"),
    "provenance": Field(lambda v: isinstance(v, dict), "an object"),
}
FIELDS = tuple(SCHEMA)
ENTRY_ALLOWED = "[file id (64 of 0-9 a-f, .x when executable), size (a non-negative integer)]"
PATH_ALLOWED = "a relative path inside the folder (no absolute path, '..', '.', '\\', NUL or empty part)"


def shorten(value: Any, limit: int = 80) -> str:
    """``repr(value)``, its middle cut out past ``limit`` characters (both ends tell what it is)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit // 2]}…{text[-(limit // 2 - 1):]}"


def _invalid(field: str, value: Any, allowed: str) -> Invalid:
    return Invalid(f"{field}: {shorten(value)} is not allowed; allowed: {allowed}")


def check(doc: Any, name: str) -> dict[str, tuple[str, int]]:
    """``doc``'s files {path: (file id, size)} if it is a publication of ``name``; else Invalid."""
    if not isinstance(doc, dict):
        raise _invalid("publication", doc, f"a JSON object with the fields {', '.join(FIELDS)}")
    _check_fields(doc)
    if doc["name"] != name:
        raise _invalid("name", doc["name"], f"{name!r}, the name it is published under")
    files = _check_files(doc["files"])
    total = sum(size for _, size in files.values())
    if doc["bytes"] != total:
        raise _invalid("bytes", doc["bytes"], f"{total}, the sum of its files' sizes")
    digest = tree_digest({rel: file_id for rel, (file_id, _) in files.items()})
    if doc["digest"] != digest:
        raise _invalid("digest", doc["digest"], f"{digest!r}, the tree digest of its files")
    return files


def _check_fields(doc: dict[str, Any]) -> None:
    if "format" in doc and not SCHEMA["format"].ok(doc["format"]):  # another format: say so before the rest
        raise _invalid("format", doc["format"], SCHEMA["format"].allowed)
    for field, spec in SCHEMA.items():
        if field not in doc:
            raise Invalid(f"{field}: missing; allowed: {spec.allowed}")
        if not spec.ok(doc[field]):
            raise _invalid(field, doc[field], spec.allowed)
    extra = sorted(set(doc) - set(SCHEMA), key=str)
    if extra:
        raise _invalid(f"field {shorten(extra[0])}", doc[extra[0]], f"only the fields {', '.join(FIELDS)}")


def _check_files(entries: dict[str, Any]) -> dict[str, tuple[str, int]]:
    files: dict[str, tuple[str, int]] = {}
    sizes: dict[str, int] = {}
    for rel, entry in entries.items():
        parts = PurePosixPath(rel).parts
        if (not rel or rel.startswith("/") or "\\" in rel or "\0" in rel or ".." in parts or "." in parts
                or rel != str(PurePosixPath(*parts))):
            raise _invalid("files", rel, PATH_ALLOWED)
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and FILE_ID.fullmatch(entry[0]) and is_int(entry[1]) and entry[1] >= 0):
            raise _invalid(f"files: {shorten(rel)}", entry, ENTRY_ALLOWED)
        if sizes.setdefault(entry[0], entry[1]) != entry[1]:  # one content, one size
            raise _invalid(f"files: {shorten(rel)}", entry, f"size {sizes[entry[0]]}, as the same content elsewhere")
        files[rel] = (entry[0], entry[1])
    folders = {str(parent) for rel in files for parent in PurePosixPath(rel).parents}
    both = sorted(folders & set(files))
    if both:
        raise _invalid("files", both[0], "a path that is not also another path's folder")
    return files
