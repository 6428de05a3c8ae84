"""A tiny deterministic tokenizer with an offsets mapping, for fast tests on the tiny random models.

Words split into pieces of at most three letters (so `` Alice`` is `` Ali`` + ``ce``: multi-token names);
leading whitespace joins the next piece like a byte-level BPE. Ids are assigned on first sight (< 97, the
tiny models' vocabulary); 0 is padding.
"""

from __future__ import annotations

import re
from typing import Any

PIECE = re.compile(r"\s*[A-Za-z]{1,3}|\s*[^\sA-Za-z]|\s+")


class FakeTokenizer:
    pad_token_id = 0
    eos_token_id = 0

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.inv: dict[int, str] = {}

    def _id(self, piece: str) -> int:
        if piece not in self.vocab:
            if len(self.vocab) >= 96:
                raise RuntimeError("FakeTokenizer vocabulary is full")
            self.vocab[piece] = len(self.vocab) + 1
            self.inv[self.vocab[piece]] = piece
        return self.vocab[piece]

    def __call__(self, text: str, return_offsets_mapping: bool = False, add_special_tokens: bool = True) -> Any:
        spans = [(m.start(), m.end()) for m in PIECE.finditer(text)]
        out: dict[str, Any] = {"input_ids": [self._id(text[a:b]) for a, b in spans]}
        if return_offsets_mapping:
            out["offset_mapping"] = spans
        return out

    def decode(self, ids: Any) -> str:
        return "".join(self.inv[int(i)] for i in ids)
