"""A word-level toy tokenizer and a small task, so tiny random models can run few-shot prompts."""

from __future__ import annotations

import re
from typing import Any

from lmscope.probes.overthinking.tasks import FewShotTask

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
