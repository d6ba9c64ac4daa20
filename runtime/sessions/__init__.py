"""Session implementations: ONNX Runtime (ort.py) and Cloud AI 100 through qaicrt (ai100.py)."""
from __future__ import annotations

from pathlib import Path

from runtime.session import Session


def open_session(package_dir: str | Path, device: str = "cpu", verify: bool | None = None, **options) -> Session:
    """The session for a package: ``cpu`` runs it (or an AI 100 package's ONNX view) with ONNX
    Runtime, ``ai100`` its QPC through qaicrt (ImportError when the Platform SDK is absent).

    A package (a folder with a manifest) is first checked against its manifest's sha256s
    (``verify``: None checks packages up to package_format.VERIFY_MAX_BYTES; PackageDamaged
    names the first damaged file)."""
    from runtime import package_format as fmt

    if (Path(package_dir) / fmt.MANIFEST).is_file():
        fmt.check_package(Path(package_dir), verify)
    if device == "ai100":
        from runtime.sessions.ai100 import AI100Session

        return AI100Session(package_dir, **options)
    if device != "cpu":
        raise ValueError(f"device: {device!r} is not allowed; allowed: cpu | ai100")
    from runtime.sessions.ort import OrtSession

    return OrtSession(package_dir, **options)
