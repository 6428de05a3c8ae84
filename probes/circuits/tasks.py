"""Ready-made clean/corrupt pair datasets for circuit work, and pairs read from a JSONL file.

- :func:`ioi_pairs`: indirect object identification (Wang et al. 2022). Clean "When Mary and John went to the
  store, John gave a drink to" (answer: the indirect object, Mary); corrupt: the second mention of the subject
  replaced by the IO name ("..., Mary gave a drink to"), which flips the answer. Metric per pair:
  ``logit(IO) - logit(S)``.
- :func:`capital_pairs`: factual recall. Clean "The capital of France is the city of" (Paris); corrupt: another
  country (Italy -> Rome). Metric per pair: ``logit(clean capital) - logit(corrupt capital)``.
- :func:`load_pairs`: one JSON object per line with ``clean``, ``corrupt``, ``target`` and optionally
  ``distractor`` (metric: their logit difference, else the target's log-probability).

Names are kept only where they are one token in the model's tokenizer (with a leading space), so each pair's two
prompts have the same length.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmscope.interventions.errors import InputError
from lmscope.probes.patching.metrics import default_metric

from .pairs import Metric

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

NAMES = ("Mary", "John", "Tom", "James", "Anna", "Sarah", "David", "Paul", "Kate", "Mark", "Lisa", "Emma", "Alice",
         "Bob", "Peter", "Laura", "Jack", "Jane", "Michael", "Susan")
IOI_TEMPLATES = ("When {A} and {B} went to the store, {S} gave a drink to",
                 "When {A} and {B} went to the park, {S} gave a ball to",
                 "After {A} and {B} went to the office, {S} handed a letter to",
                 "Then, {A} and {B} had a long talk. {S} gave a book to")
CAPITALS = {"France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin", "Japan": "Tokyo",
            "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens", "England": "London", "China": "Beijing",
            "Canada": "Ottawa", "Austria": "Vienna", "Poland": "Warsaw", "Portugal": "Lisbon", "Ireland": "Dublin",
            "Norway": "Oslo", "Sweden": "Stockholm", "Kenya": "Nairobi", "Peru": "Lima", "Cuba": "Havana"}
CAPITAL_TEMPLATE = "The capital of {country} is the city of"


@dataclass(frozen=True)
class PairTask:
    """Clean/corrupt prompts, each pair's answer (``targets``) and the corrupt answer (``distractors``), and one
    metric per pair (``logit(target) - logit(distractor)``)."""

    name: str
    clean: list[str]
    corrupt: list[str]
    targets: list[str]
    distractors: list[str | None]
    metrics: list[Metric]

    def __len__(self) -> int:
        return len(self.clean)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "pairs": [{"clean": c, "corrupt": k, "target": t, "distractor": d} for c, k, t, d
                                             in zip(self.clean, self.corrupt, self.targets, self.distractors)]}


def _single_tokens(model: HookedModel, words: Any) -> list[str]:
    if model.tokenizer is None:
        raise InputError("Ready-made pair tasks need the model's tokenizer.")
    return [w for w in words if len(model.tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]


def _task(model: HookedModel, name: str, rows: list[tuple[str, str, str, str | None]]) -> PairTask:
    clean, corrupt, targets, distractors = (list(x) for x in zip(*rows))
    metrics = [default_metric(model, t, d) for t, d in zip(targets, distractors)]
    return PairTask(name, clean, corrupt, targets, distractors, metrics)


def ioi_pairs(model: HookedModel, n: int = 24, seed: int = 0) -> PairTask:
    """``n`` IOI pairs (the four templates in turn, seeded random single-token names)."""
    names = _single_tokens(model, NAMES)
    if len(names) < 2 or n < 1:
        raise InputError(f"ioi_pairs needs n >= 1 and two single-token names (this tokenizer has {len(names)}).")
    rng = random.Random(seed)
    rows: list[tuple[str, str, str, str | None]] = []
    for i in range(n):
        template = IOI_TEMPLATES[i % len(IOI_TEMPLATES)]
        a, b = rng.sample(names, 2)
        rows.append((template.format(A=a, B=b, S=b), template.format(A=a, B=b, S=a), " " + a, " " + b))
    return _task(model, "ioi", rows)


def capital_pairs(model: HookedModel, n: int = 24, seed: int = 0) -> PairTask:
    """``n`` capital-recall pairs (clean and corrupt countries drawn without repeats within a pair, seeded)."""
    ok = [c for c in _single_tokens(model, CAPITALS) if _single_tokens(model, [CAPITALS[c]])]
    if len(ok) < 2 or n < 1:
        raise InputError(f"capital_pairs needs n >= 1 and two countries whose name and capital are single tokens "
                         f"(this tokenizer has {len(ok)}).")
    rng = random.Random(seed)
    rows: list[tuple[str, str, str, str | None]] = []
    for _ in range(n):
        a, b = rng.sample(ok, 2)
        rows.append((CAPITAL_TEMPLATE.format(country=a), CAPITAL_TEMPLATE.format(country=b),
                     " " + CAPITALS[a], " " + CAPITALS[b]))
    return _task(model, "capitals", rows)


def load_pairs(model: HookedModel, path: str | os.PathLike[str]) -> PairTask:
    """Pairs from a JSONL file of ``{"clean", "corrupt", "target", "distractor"?}`` objects (one per line)."""
    rows: list[tuple[str, str, str, str | None]] = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
    except OSError as err:
        raise InputError(f"Cannot read the pairs file {os.fspath(path)!r}: {err.strerror or err}.") from None
    for i, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{os.fspath(path)}, line {i}: not JSON ({err.msg}).") from None
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k].strip()
                                                 for k in ("clean", "corrupt", "target")):
            raise InputError(f"{os.fspath(path)}, line {i}: each line is an object with non-empty strings 'clean', "
                             "'corrupt', 'target' (and optionally 'distractor').")
        rows.append((item["clean"], item["corrupt"], item["target"], item.get("distractor")))
    if not rows:
        raise InputError(f"{os.fspath(path)} holds no pairs.")
    return _task(model, os.path.basename(os.fspath(path)), rows)
