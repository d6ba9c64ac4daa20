"""MkDocs hooks (mkdocs.yml ``hooks:``): the configuration reference is generated at each build, never committed."""
from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).resolve().parent))

from config_reference import render  # noqa: E402  (the folder above is not a package)

REFERENCE = "reference/config.md"


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, REFERENCE, content=render()))
    return files
