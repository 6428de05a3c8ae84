"""Binding tasks: a template, an entity pool and an attribute pool, and the prompts built from them.

A task's context is a prefix followed by one statement per slot (``" {entity} lives in the capital city of
{attribute}."``) or one joint statement with indexed slots (``" {E0} and {E1} live in {A0} and {A1}
respectively."``); the query names one entity (``"...Which city does {entity} live in?..."``). The answer is
the first token of the queried entity's attribute (through ``answers`` when the attribute is not the answer
itself, e.g. country -> capital). Token spans come from the tokenizer's offsets mapping over the text we
assembled, so multi-token names and merged whitespace are handled exactly.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Sequence

from lmscope.interventions.errors import InputError

SLOT = re.compile(r"\{(E|A)(\d+)\}")
SHIPPED = ("capitals", "shapes", "fruits", "parallel")
Span = tuple[int, int]


@dataclass(frozen=True)
class BindingTask:
    """A binding task. ``entities``/``attributes`` map a split name (``"train"``, ``"test"``) to a pool."""

    name: str
    prefix: str
    context: str
    query: str
    entities: dict[str, tuple[str, ...]]
    attributes: dict[str, tuple[str, ...]]
    answers: dict[str, str] = field(default_factory=dict)
    n_entities: int = 2
    answer_prefix: str = " "

    def __post_init__(self) -> None:
        if "{entity}" not in self.query:
            raise InputError(f"Task {self.name!r}: the query template needs an {{entity}} slot; got {self.query!r}.")
        for kind, pools in (("entities", self.entities), ("attributes", self.attributes)):
            if not pools or any(len(p) == 0 for p in pools.values()):
                raise InputError(f"Task {self.name!r}: every split needs a non-empty pool of {kind}.")
        self.slots()  # validates the context template

    @property
    def fixed_slots(self) -> int | None:
        """The number of slots an indexed context template fixes (None for a per-slot statement)."""
        found = {int(i) for _, i in SLOT.findall(self.context)}
        return max(found) + 1 if found else None

    def context_template(self, n: int) -> str:
        """The context with indexed slots ``{E0}``, ``{A0}``, ... for ``n`` entities."""
        if "{entity}" in self.context or "{attribute}" in self.context:
            if "{entity}" not in self.context or "{attribute}" not in self.context:
                raise InputError(f"Task {self.name!r}: a per-slot statement needs both {{entity}} and {{attribute}}; "
                                 f"got {self.context!r}.")
            return "".join(self.context.replace("{entity}", f"{{E{i}}}").replace("{attribute}", f"{{A{i}}}")
                           for i in range(n))
        fixed = self.fixed_slots
        if fixed is None:
            raise InputError(f"Task {self.name!r}: the context template has no entity/attribute slots; use "
                             "{entity} and {attribute} (one statement per slot) or {E0}, {A0}, {E1}, {A1}, ...")
        if n != fixed:
            raise InputError(f"Task {self.name!r}: its context template has exactly {fixed} slots, not {n}.")
        return self.context

    def slots(self, n: int | None = None) -> int:
        """Validate the template for ``n`` slots (default ``n_entities``) and return ``n``."""
        n = self.n_entities if n is None else n
        if n < 1:
            raise InputError(f"Task {self.name!r}: n_entities must be at least 1, got {n}.")
        found = [(k, int(i)) for k, i in SLOT.findall(self.context_template(n))]
        for kind in "EA":
            got = sorted(i for k, i in found if k == kind)
            if got != list(range(n)):
                raise InputError(f"Task {self.name!r}: the context must name {kind}0..{kind}{n - 1} exactly once "
                                 f"each; found {[f'{kind}{i}' for i in got]}.")
        return n

    def answer(self, attribute: str) -> str:
        """The answer text of an attribute (leading space included)."""
        return self.answer_prefix + self.answers.get(attribute, attribute)

    def pool(self, kind: str, split: str) -> tuple[str, ...]:
        pools = self.entities if kind == "entities" else self.attributes
        if split not in pools:
            raise InputError(f"Task {self.name!r} has no split {split!r}; splits: {', '.join(sorted(pools))}.")
        return pools[split]

    @classmethod
    def from_template(cls, name: str, template: str, entities: Sequence[str], attributes: Sequence[str], *,
                      query: str, answers: dict[str, str] | None = None, n_entities: int = 2,
                      test_fraction: float = 0.5, seed: int = 0) -> BindingTask:
        """A user task from one context template string (prefix text before the first slot statement is not
        separated: pass the whole context, per-slot or indexed) and pools split disjointly train/test."""
        return cls(name, "", template, query, split_pool(entities, test_fraction, seed),
                   split_pool(attributes, test_fraction, seed + 1), dict(answers or {}), n_entities)


def split_pool(pool: Sequence[str], test_fraction: float, seed: int) -> dict[str, tuple[str, ...]]:
    """A disjoint train/test split of a pool (duplicates removed, order seeded)."""
    items = list(dict.fromkeys(pool))
    if not 0 < test_fraction < 1:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    random.Random(seed).shuffle(items)
    k = max(1, round(len(items) * test_fraction))
    return {"train": tuple(items[k:]), "test": tuple(items[:k])}


def load_task(name: str) -> BindingTask:
    """A shipped task: ``capitals``, ``shapes``, ``fruits`` or ``parallel``."""
    key = name.lower()
    if key not in SHIPPED:
        raise InputError(f"Unknown binding task {name!r}; shipped: {', '.join(SHIPPED)}.")
    data: dict[str, Any] = json.loads(resources.files(__package__).joinpath("data").joinpath(f"{key}.json").read_text())
    return BindingTask(name=key, prefix=data["prefix"], context=data["context"], query=data["query"],
                       entities={k: tuple(v) for k, v in data["entities"].items()},
                       attributes={k: tuple(v) for k, v in data["attributes"].items()},
                       answers=data.get("answers", {}), n_entities=data.get("n_entities", 2))
