"""The Cloud AI 100 SDK on this machine: where its compiler is, which kind, and which version.

The compiler's path stays out of keys; its version (the SDK's versions/apps.xml and
platform.xml next to the compiler's exec/ folder, else the binary's sha256) enters them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

SDK_ROOT = Path("/opt/qti-aic")
SDK_COMPILERS = (SDK_ROOT / "exec" / "qaic-compile", SDK_ROOT / "exec" / "qaic-exec")
# Where the Platform SDK's Python bindings (qaicrt) live: runtime.sessions.ai100.SDK_PYTHON
SDK_PYTHON = SDK_ROOT / "dev" / "lib" / "x86_64"


def compiler_candidates(configured: Optional[str]) -> list[Path]:
    return [Path(configured).expanduser().absolute()] if configured else list(SDK_COMPILERS)


def find_compiler(configured: Optional[str]) -> Optional[Path]:
    """hw.compiler if set, else the SDK's qaic-compile, then qaic-exec: the first executable file."""
    for path in compiler_candidates(configured):
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def compiler_kind(path: Optional[Path]) -> str:
    return "qaic-exec" if path is not None and path.name.startswith("qaic-exec") else "qaic-compile"


def sdk_default(kind: str) -> str:
    """The compiler path compile.sh falls back to (never a local override: the script is portable)."""
    return str(SDK_ROOT / "exec" / kind)


def compiler_version(path: Path) -> str:
    """The SDK's versions (apps.xml, platform.xml next to the compiler's exec/ folder), else
    ``sha256:<digest of the binary>``. Never raises."""
    roots = []
    for p in (path, path.resolve()):
        if p.parent.name == "exec" and p.parent.parent not in roots:
            roots.append(p.parent.parent)
    for root in roots:
        found = [f"{name} {v}" for name in ("apps", "platform")
                 if (v := _xml_version(root / "versions" / f"{name}.xml"))]
        if found:
            return "; ".join(found)
    try:
        from runtime.package_format import file_sha256

        return "sha256:" + file_sha256(path)
    except OSError as e:
        return f"unknown ({type(e).__name__} reading {path.name})"


def _xml_version(path: Path) -> Optional[str]:
    """base_version[.build_id] of an SDK versions/*.xml, or None."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    base = (root.findtext(".//base_version") or "").strip()
    # <build_id> holding the number (it may also be the name of the element around both)
    build = next((e.text.strip() for e in root.iter("build_id") if len(e) == 0 and (e.text or "").strip()), "")
    if not base:
        return None
    return f"{base}.{build}" if build else base


def qaicrt_present() -> bool:
    """Whether the Platform SDK's Python runtime (qaicrt) is importable here, found without importing it."""
    import importlib.util

    return importlib.util.find_spec("qaicrt") is not None or any(SDK_PYTHON.glob("qaicrt*"))
