"""The package's tokenizer (package_dir/tokenizer, a Hugging Face tokenizer folder)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from runtime.package_format import TOKENIZER_DIR


def load_tokenizer(package_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(package_dir) / TOKENIZER_DIR)


class TextRefused(ValueError):
    """A text refused before tokenization: ``key`` names where it came from."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def longest_token_bytes(tokenizer: Any) -> int:
    """The most UTF-8 bytes a vocabulary entry is spelled with: no token covers more of a text
    (byte-level and SentencePiece entries spell each byte they stand for with at least one byte)."""
    longest = getattr(tokenizer, "_pipeline_longest_token_bytes", None)
    if longest is None:
        longest = max((len(t.encode("utf-8", "surrogatepass")) for t in tokenizer.get_vocab()), default=1)
        tokenizer._pipeline_longest_token_bytes = longest
    return longest


def check_texts(tokenizer: Any, texts: Sequence[str], max_tokens: int | None, key: str) -> None:
    """TextRefused for a text that is not valid Unicode or cannot fit in ``max_tokens`` tokens, told
    by its size in bytes before any tokenization (a text of more than ``max_tokens`` x the longest
    token's bytes cannot), so a huge input costs no more than a small one. Tokenizers whose
    normalizer deletes characters (not those of causal LMs) could fit more: their cap is this one.
    ``max_tokens`` None: the Unicode check only (an input the model truncates)."""
    cap = None if max_tokens is None else max_tokens * longest_token_bytes(tokenizer)
    for i, text in enumerate(texts):
        where = key if len(texts) == 1 else f"{key}[{i}]"
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise TextRefused(where, f"holds {text[e.start:e.end]!r} at character {e.start} (a lone surrogate) and is "
                                     "not allowed; allowed: valid Unicode text") from None
        if cap is not None and size > cap:
            raise TextRefused(where, f"{size} bytes is not allowed; allowed: at most {cap} bytes ({max_tokens} tokens "
                                     f"of at most {longest_token_bytes(tokenizer)} bytes each)")


def truncated_text(tokenizer: Any, text: str, max_tokens: int) -> str:
    """``text`` cut (at a character) past what its first ``max_tokens`` tokens can cover, with a
    margin longer than a word: for an input the model truncates anyway, tokenizing the cut text
    gives the same first ``max_tokens`` tokens at a bounded cost."""
    limit = max_tokens * longest_token_bytes(tokenizer) + 256
    data = text.encode("utf-8", "surrogatepass")
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore")
