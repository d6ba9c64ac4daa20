"""A request's text as its tokens come: incremental detokenization with stop strings.

The text of a response is the concatenation of the pieces ``push`` and ``finish`` return, so a
streamed response and a whole one are the same text by construction. A piece is held back
while it ends in an incomplete UTF-8 sequence or in what may be the start of a stop string; a
stop string ends the text before it (OpenAI's rule: the stop string itself is not returned).
"""
from __future__ import annotations

from typing import Any, Sequence

REPLACEMENT = "\ufffd"  # what decoding shows for an incomplete UTF-8 sequence


class TextTracker:
    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.sent = ""          # the text returned so far
        self.stopped = False    # a stop string was met

    def push(self, ids: Sequence[int]) -> str:
        """The new piece of text after ``ids`` (all the new tokens so far); may be empty."""
        return self._piece(ids, final=False)

    def finish(self, ids: Sequence[int]) -> str:
        """The last piece: everything held back that the final text holds."""
        return self._piece(ids, final=True)

    def _piece(self, ids: Sequence[int], final: bool) -> str:
        if self.stopped:
            return ""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        cuts = [text.find(s) for s in self.stop if s in text]
        if cuts:
            text, final, self.stopped = text[:min(cuts)], True, True
        if not final:
            text = text.rstrip(REPLACEMENT)
            text = text[:len(text) - self._held(text)]
        if not text.startswith(self.sent):  # the tokenizer rewrote text already sent: keep what was sent
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece

    def _held(self, text: str) -> int:
        """How many trailing characters may begin a stop string."""
        return max((k for s in self.stop for k in range(min(len(s) - 1, len(text)), 0, -1) if s.startswith(text[-k:])),
                   default=0)
