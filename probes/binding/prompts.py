"""Prompts of a binding task with the token span of every entity and attribute and the answer tokens.

Spans come from the tokenizer's offsets mapping over text whose character spans we know (we assembled it),
never from searching the decoded string. A span is ``(start, stop)`` in token indices of the prompt without
padding (the coordinates of :mod:`lmscope.interventions.positions`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from lmscope.interventions.errors import InputError

from .tasks import SLOT, BindingTask, Span


@dataclass(frozen=True)
class Context:
    """One sampled context: the entity and attribute of each slot."""

    entities: tuple[str, ...]
    attributes: tuple[str, ...]

    def rolled(self, k: int) -> Context:
        """The cyclically shifted context whose slot 0 holds this context's slot ``k``."""
        return Context(self.entities[k:] + self.entities[:k], self.attributes[k:] + self.attributes[:k])


@dataclass(frozen=True)
class BindingPrompt:
    """A tokenized prompt. ``query_slot`` is None for a context-only prompt or a query about an absent name."""

    context: Context
    query_entity: str | None
    query_slot: int | None
    text: str
    ids: tuple[int, ...]
    entity_spans: tuple[Span, ...]
    attribute_spans: tuple[Span, ...]
    context_len: int  # tokens before the query: positions [0, context_len) are the context
    candidates: tuple[int, ...]  # first answer token of each slot's attribute

    @property
    def answer(self) -> int | None:
        """The right answer token (None when the queried name is not in the context)."""
        return None if self.query_slot is None else self.candidates[self.query_slot]


def _tokenize(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    try:
        enc = tokenizer(text, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError) as err:
        raise InputError(f"Binding prompts need a tokenizer with an offsets mapping (a fast tokenizer): {err}") \
            from None
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def answer_token(tokenizer: Any, task: BindingTask, attribute: str) -> int:
    """First token of ``attribute``'s answer (e.g. `` Paris`` for France in CAPITALS)."""
    ids = tokenizer(task.answer(attribute), add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"The answer {task.answer(attribute)!r} of attribute {attribute!r} tokenizes to nothing.")
    return int(ids[0])


def _token_span(offsets: list[tuple[int, int]], start: int, stop: int, what: str) -> Span:
    hit = [t for t, (a, b) in enumerate(offsets) if b > a and a < stop and b > start]
    if not hit:
        raise InputError(f"{what} tokenizes to nothing; names must contain visible characters.")
    return hit[0], hit[-1] + 1


def build_prompt(tokenizer: Any, task: BindingTask, context: Context, query: int | str | None = 0, *,
                 allow_absent: bool = False) -> BindingPrompt:
    """Tokenize ``context`` (plus a query about slot ``query`` or a named entity; None = context only).

    A query about a name that is not in the context raises unless ``allow_absent`` (used for calibration).
    """
    n = task.slots(len(context.entities))
    if len(context.attributes) != n:
        raise InputError(f"A context needs one attribute per entity; got {len(context.entities)} entities and "
                         f"{len(context.attributes)} attributes.")
    for name in (*context.entities, *context.attributes):
        if not name.strip():
            raise InputError(f"Task {task.name!r}: the name {name!r} is empty; it would tokenize to nothing.")
    text, spans = task.prefix, {}
    pos = 0
    template = task.context_template(n)
    for m in SLOT.finditer(template):
        text += template[pos:m.start()]
        value = (context.entities if m.group(1) == "E" else context.attributes)[int(m.group(2))]
        spans[(m.group(1), int(m.group(2)))] = (len(text), len(text) + len(value))
        text += value
        pos = m.end()
    text += template[pos:]
    context_chars = len(text)
    slot: int | None = None
    entity: str | None = None
    if query is not None:
        if isinstance(query, int):
            if not 0 <= query < n:
                raise InputError(f"Query slot {query} is out of range for {n} entities.")
            slot, entity = query, context.entities[query]
        else:
            entity = query
            slot = context.entities.index(query) if query in context.entities else None
            if slot is None and not allow_absent:
                raise InputError(f"The query names {query!r}, which is not in the context {list(context.entities)}; "
                                 "absent names are allowed only for calibration (allow_absent=True).")
        text += task.query.replace("{entity}", entity)
    ids, offsets = _tokenize(tokenizer, text)
    if not ids:
        raise InputError("The prompt tokenizes to nothing.")
    tok_spans = {k: _token_span(offsets, a, b, f"{'Entity' if k[0] == 'E' else 'Attribute'} "
                                f"{text[a:b]!r}") for k, (a, b) in spans.items()}
    ordered = sorted(tok_spans.values())
    if any(b0 > a1 for (_, b0), (a1, _) in zip(ordered, ordered[1:])):
        raise InputError(f"Two names share a token in {text[:context_chars]!r}; separate them in the template.")
    context_len = sum(1 for a, b in offsets if b <= context_chars)
    cands = tuple(answer_token(tokenizer, task, a) for a in context.attributes)
    return BindingPrompt(context, entity, slot, text, tuple(int(i) for i in ids),
                         tuple(tok_spans[("E", i)] for i in range(n)), tuple(tok_spans[("A", i)] for i in range(n)),
                         context_len, cands)


def sample_contexts(tokenizer: Any, task: BindingTask, n_samples: int, *, split: str = "test",
                    n_entities: int | None = None, seed: int = 0, spare_entity: bool = False) -> list[Context]:
    """``n_samples`` random contexts from one split; the attributes of a context have distinct answer tokens.

    ``spare_entity`` also requires an entity left over in the pool (a name absent from every context, for
    calibration queries).
    """
    n = task.slots(n_entities)
    ents, attrs = task.pool("entities", split), task.pool("attributes", split)
    need = n + (1 if spare_entity else 0)
    if len(ents) < need or len(attrs) < n:
        raise InputError(f"Task {task.name!r} split {split!r} has {len(ents)} entities and {len(attrs)} attributes; "
                         f"{n} entities per context need at least {need} entities and {n} attributes.")
    tokens = {a: answer_token(tokenizer, task, a) for a in attrs}
    if len(set(tokens.values())) < n:
        raise InputError(f"Task {task.name!r} split {split!r}: fewer than {n} attributes have distinct answer tokens.")
    rng = random.Random(seed)
    out: list[Any] = []
    while len(out) < n_samples:
        chosen = rng.sample(attrs, n)
        if len({tokens[a] for a in chosen}) == n:
            out.append(Context(tuple(rng.sample(ents, n)), tuple(chosen)))
    return out


def absent_entity(task: BindingTask, context: Context, split: str, seed: int = 0) -> str:
    """A name of the split's pool that is not in ``context`` (for calibration queries)."""
    pool = [e for e in task.pool("entities", split) if e not in context.entities]
    if not pool:
        raise InputError(f"Task {task.name!r} split {split!r} has no entity outside the context for calibration.")
    return random.Random(seed).choice(pool)


def span_positions(spans: Sequence[Span]) -> list[int]:
    """Token indices covered by ``spans`` in order."""
    return [t for a, b in spans for t in range(a, b)]
