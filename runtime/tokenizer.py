"""The package's tokenizer (package_dir/tokenizer, a Hugging Face tokenizer folder)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.package_format import TOKENIZER_DIR


def load_tokenizer(package_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(package_dir) / TOKENIZER_DIR)
