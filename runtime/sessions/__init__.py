"""Opening a package: the session of the target its program names, found through the ``pipeline.sessions`` entry points.

Each target registers its Session class under its name (ONNX Runtime's ``OrtSession`` in
ort.py for cpu; the AI 100 one in ai100.py), so the runtime names no target: a package's
manifest says which target opens it, as an ExecuTorch program names its backend. Where a
package's program has an ONNX view (the exact graph handed to a target's compiler),
``open_onnx`` runs that with ONNX Runtime on any machine.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from runtime.session import Session

SESSIONS = "pipeline.sessions"


@functools.lru_cache(maxsize=None)
def _registered() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=SESSIONS)}


def session_names() -> list[str]:
    """The targets whose sessions are installed."""
    return sorted(_registered())


def session_class(target: str) -> type:
    """The Session class registered for a target; ValueError (one line) when none is."""
    ep = _registered().get(target)
    if ep is None:
        raise ValueError(f"target: {target!r} has no session installed; allowed: {' | '.join(session_names())}")
    return ep.load()


def open_session(package_dir: str | Path, target: str | None = None, verify: bool | None = None,
                 **options: Any) -> Session:
    """The session for a package (or a compile stage's program folder): its own target's, or the
    session of ``target`` (``cpu``: ONNX Runtime, for any program with ONNX graphs). ``options``
    go to the session (``spinning`` every session takes; others are its own, e.g. ``num_threads``;
    an ImportError says what a target's runtime lacks here).

    A package (a folder with a manifest) is first checked against its manifest's sha256s
    (``verify``: None checks packages up to package_format.VERIFY_MAX_BYTES; PackageDamaged
    names the first damaged file)."""
    from runtime import package_format as fmt

    if (Path(package_dir) / fmt.MANIFEST).is_file():
        fmt.check_package(Path(package_dir), verify)
    name = target or fmt.read_program(Path(package_dir)).target
    return session_class(name)(package_dir, **options)


def open_onnx(package_dir: str | Path, verify: bool | None = None, **options: Any) -> Session:
    """The program's ONNX graphs run by ONNX Runtime: the program itself for a host target, the
    exact ONNX handed to the compiler for a device target (the ONNX view)."""
    from runtime import package_format as fmt
    from runtime.sessions.ort import OrtSession

    if (Path(package_dir) / fmt.MANIFEST).is_file():
        fmt.check_package(Path(package_dir), verify)
    return OrtSession(package_dir, **options)
