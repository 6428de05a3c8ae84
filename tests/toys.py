"""Toy tokenizers and tasks for fast tests on the tiny random models (one definition each, used everywhere).

- :class:`FakeTokenizer`: a deterministic tokenizer with an offsets mapping (binding tests). Words split into
  pieces of at most three letters (so `` Alice`` is `` Ali`` + ``ce``: multi-token names); leading whitespace
  joins the next piece like a byte-level BPE. Ids are assigned on first sight (< 97, the tiny models'
  vocabulary); 0 is padding.
- :func:`binding_task`: the toy binding task that fits the tiny models' 64 positions.
- :class:`ToyTokenizer`, :func:`toy_task`, :func:`toy_model`: a word-level tokenizer and a small few-shot task,
  so tiny random models can run the overthinking prompts.
- :func:`patching_pair`, :func:`gap_metric`: a clean / corrupt pair of token ids and a logit-gap metric for the
  patching sweeps on the tiny models.
- :class:`FakeTerminal`: a text stream that says it is a terminal (progress bars draw only on one).
"""

from __future__ import annotations

import io
import re
from typing import Any

from lmscope.probes.overthinking.tasks import FewShotTask


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


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


def binding_task(multi_token: bool = False) -> Any:
    """The toy binding task; ``multi_token``: names of one to three pieces, so prompts of a batch differ in
    length (padding)."""
    from lmscope.probes.binding import BindingTask

    entities = {"train": ("Ann", "Bobby", "Cy", "Deedee", "Eve"), "test": ("Fay", "Gustavo", "Hal", "Idaho", "Jo")} \
        if multi_token else {"train": ("Ann", "Bob", "Cy", "Dee", "Eve"), "test": ("Fay", "Gus", "Hal", "Ida", "Jo")}
    return BindingTask(name="toy", prefix="Ctx:", context=" {entity} in {attribute}.", query=" Q {entity}:",
                       entities=entities,
                       attributes={"train": ("Rome", "Oslo", "Kiev", "Lima"), "test": ("Bern", "Doha", "Riga", "Baku")},
                       answers={}, n_entities=2)


WORDS = {"a": [*"ant bee cat dog eel fox".split(), "big gnu", "red hen old owl"],
         "b": [*"fig kiwi lime pear plum date".split(), "ripe yam", "oat bran and rye"]}


class ToyTokenizer:
    """Pieces are ' word', 'word', newline or punctuation; ids are assigned on first sight (< 97)."""

    pad_token_id = 0
    eos_token_id = 0

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {"<pad>": 0}

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, Any]:
        ids = []
        for piece in re.findall(r" ?\w+|\n| |[^\w\s]", text):
            if piece not in self.vocab:
                self.vocab[piece] = len(self.vocab)
            ids.append(self.vocab[piece])
        assert max(ids, default=0) < 97, "toy vocabulary overflow"
        return {"input_ids": ids}

    def decode(self, ids: list[int]) -> str:
        inv = {v: k for k, v in self.vocab.items()}
        return "".join(inv.get(i, "?") for i in ids)


def toy_task(labels: tuple[str, str] = ("yes", "no")) -> FewShotTask:
    pairs = [(w, labels[0]) for w in WORDS["a"]] + [(w, labels[1]) for w in WORDS["b"]]
    return FewShotTask("toy", pairs, list(labels), template="{text}\nA:")


def toy_model(name: str = "llama_tied") -> Any:
    from tiny_models import build_tiny

    from lmscope.interventions import HookedModel

    return HookedModel(build_tiny(name), ToyTokenizer())


def patching_pair(n: int = 6, seed: int = 1) -> tuple[Any, Any]:
    """Clean / corrupt token ids ``[n]`` for the tiny models (seeded): the corrupt prompt differs at tokens 1 and 3."""
    from tiny_models import random_ids

    clean = random_ids((n,), seed)
    corrupt = clean.clone()
    corrupt[1] = (corrupt[1] + 5) % 97
    corrupt[3] = (corrupt[3] + 11) % 97
    return clean, corrupt


def gap_metric(logits: Any) -> Any:
    """The logit of token 5 minus token 7 (a sweep metric on the tiny models' vocabulary)."""
    return logits[:, 5] - logits[:, 7]


def edge_pairs(n: int = 7) -> tuple[Any, Any]:
    """Two clean / corrupt pairs of token ids ``[2, n]`` for the tiny models: the corrupt prompts differ at tokens
    2 and 4 (edge-level methods compare the two runs position by position)."""
    import torch
    from tiny_models import random_ids

    clean = torch.stack([random_ids((n,), 1), random_ids((n,), 2)])
    corrupt = clean.clone()
    corrupt[:, 2] = (corrupt[:, 2] + 5) % 97
    corrupt[:, 4] = (corrupt[:, 4] + 9) % 97
    return clean, corrupt


class CharTokenizer:
    """One token per character (ids 1..96), enough to drive a CLI on a tiny random model."""

    pad_token_id = 0
    eos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [1 + ord(c) % 96 for c in text]}

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i - 1 + 32 * 3) if i > 0 else "" for i in ids)
