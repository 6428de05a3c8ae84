"""Few-shot classification tasks and the demo-label settings of "Overthinking the Truth".

A :class:`FewShotTask` is (input text, label) pairs, a demo template and the label words. A prompt is
``n_demos`` demonstrations ``"{text}\\nAnswer: {label}"`` joined by blank lines, then the query
``"{text}\\nAnswer:"``. Every setting of one prompt index shares the same texts (a paired design); only
the labels shown in the demos differ:

- ``"true"``: correct labels;
- ``"permuted"``: every demo label mapped through one random cyclic shift of the label set (fixed per
  prompt, never the identity, so no label maps to itself);
- ``"half"``: exactly ``n_demos // 2`` demos (chosen at random) permuted with that shift;
- ``"random"``: labels drawn uniformly from the label set.

Prompts are built as token ids, piece by piece, so the label's first token and the position before it
are known exactly (no search through a tokenisation).
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from lmscope.interventions.errors import InputError

from . import data

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel

SETTINGS = ("true", "permuted", "half", "random")
FALSE_SETTINGS = ("permuted", "half", "random")


@dataclass
class FewShotTask:
    """Pairs of (input text, label word), the label set, and the templates.

    ``template`` must contain ``{text}`` and end with the text that precedes the label (the label is
    appended after a space); ``sep`` joins demos.
    """

    name: str
    pairs: list[tuple[str, str]]
    labels: list[str]
    template: str = "{text}\nAnswer:"
    sep: str = "\n\n"
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.labels) < 2:
            raise InputError(f"Task {self.name!r} needs at least two labels, got {self.labels!r}.")
        if len(set(self.labels)) != len(self.labels):
            raise InputError(f"Task {self.name!r} has repeated labels: {self.labels!r}.")
        if "{text}" not in self.template:
            raise InputError(f"The template of task {self.name!r} must contain '{{text}}', got {self.template!r}.")
        known = set(self.labels)
        for i, pair in enumerate(self.pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise InputError(f"Pair {i} of task {self.name!r} is not a (text, label) pair: {pair!r}.")
            text, label = pair
            if not label:
                raise InputError(f"Pair {i} of task {self.name!r} ({text!r}) has no label word.")
            if label not in known:
                raise InputError(f"Pair {i} of task {self.name!r} ({text!r}) has label {label!r}, which is not "
                                 f"one of the task's labels {self.labels!r}.")
        self.pairs = [(str(t), str(lab)) for t, lab in self.pairs]
        missing = [lab for lab in self.labels if not any(p[1] == lab for p in self.pairs)]
        if missing:
            raise InputError(f"Task {self.name!r} has no input with label(s) {missing!r}.")

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    def by_label(self) -> list[list[str]]:
        """Input texts grouped by label index."""
        return [[t for t, lab in self.pairs if lab == label] for label in self.labels]


def _task(name: str, groups: dict[str, Sequence[str]], description: str, template: str = "{text}\nAnswer:",
          ) -> FewShotTask:
    pairs = [(t, label) for label, items in groups.items() for t in items]
    return FewShotTask(name, pairs, list(groups), template=template, description=description)


def _builtin() -> dict[str, FewShotTask]:
    odd = [n for n in data.NUMBERS if int(n) % 2]
    even = [n for n in data.NUMBERS if not int(n) % 2]
    return {
        "unnatural": _task("unnatural", {"foo": data.ANIMALS, "bar": data.FRUITS, "lamp": data.VEHICLES},
                           "objects -> arbitrary words standing for animal/fruit/vehicle (learnable only in "
                           "context; the task the paper scores heads on)"),
        "category": _task("category", {"animal": data.ANIMALS, "fruit": data.FRUITS, "vehicle": data.VEHICLES},
                          "objects -> their category (answers the model knows)"),
        "sentiment": _task("sentiment", {"positive": data.POSITIVE, "negative": data.NEGATIVE},
                           "clearly positive / negative words", template="Review: {text}\nAnswer:"),
        "continent": _task("continent", {"Europe": data.EUROPE, "Asia": data.ASIA, "Africa": data.AFRICA},
                           "country -> continent"),
        "parity": _task("parity", {"even": even, "odd": odd}, "two-digit number -> even/odd"),
    }


#: HF dataset names the loader knows: (hub id, config, text field, label field, label words).
HF_DATASETS: dict[str, tuple[str, str | None, str, str, list[str]]] = {
    "sst2": ("stanfordnlp/sst2", None, "sentence", "label", ["negative", "positive"]),
    "agnews": ("fancyzhx/ag_news", None, "text", "label", ["World", "Sports", "Business", "Technology"]),
    "trec": ("CogComp/trec", None, "text", "coarse_label",
             ["Abbreviation", "Entity", "Description", "Person", "Location", "Number"]),
}


def task_names() -> list[str]:
    """Built-in offline task names, then the HF dataset names (those need a network)."""
    return sorted(_builtin()) + sorted(HF_DATASETS)


def load_task(name: str | FewShotTask, *, max_examples: int = 2000, timeout: float = 3.0) -> FewShotTask:
    """A built-in task by name, a user's :class:`FewShotTask` as is, or an HF dataset (network needed).

    HF datasets fail fast offline: a ``timeout``-second connection check comes before any download.
    """
    if isinstance(name, FewShotTask):
        return name
    builtin = _builtin()
    if name in builtin:
        return builtin[name]
    key = name.lower().replace("-", "").replace("_", "")
    if key not in HF_DATASETS:
        raise InputError(f"Unknown task {name!r}; built-in tasks: {', '.join(sorted(builtin))}; HF datasets "
                         f"(network needed): {', '.join(sorted(HF_DATASETS))}; or pass a FewShotTask of your "
                         "own (text, label) pairs.")
    return _load_hf(key, max_examples, timeout)


def _load_hf(key: str, max_examples: int, timeout: float) -> FewShotTask:
    hub_id, config, text_field, label_field, words = HF_DATASETS[key]
    offline = f"Cannot load the HF dataset {key!r} ({hub_id}) offline"
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise InputError(f"{offline}: the 'datasets' package is not installed (pip install datasets; a network "
                         f"is needed too). Built-in offline tasks: {', '.join(sorted(_builtin()))}.") from None
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError as err:
        raise InputError(f"{offline}: huggingface.co is unreachable ({err}). Built-in offline tasks: "
                         f"{', '.join(sorted(_builtin()))}.") from None
    from datasets import load_dataset

    rows = load_dataset(hub_id, config, split="train")
    pairs = [(str(r[text_field]), words[int(r[label_field])]) for r in rows.select(range(min(max_examples,
                                                                                             len(rows))))]
    return FewShotTask(key, pairs, words, description=f"HF dataset {hub_id}")


# -- label settings ---------------------------------------------------------------------------------
def shown_labels(setting: str, true: Sequence[int], n_labels: int, rng: random.Random) -> list[int]:
    """The label indices the demos show under ``setting``, given their true label indices."""
    if setting not in SETTINGS:
        raise InputError(f"Unknown setting {setting!r}; settings: {', '.join(SETTINGS)}.")
    shift = rng.randrange(1, n_labels)  # drawn first, whatever the setting: same shift for every setting
    flip = set(rng.sample(range(len(true)), len(true) // 2))
    rand = [rng.randrange(n_labels) for _ in true]
    if setting == "true":
        return list(true)
    if setting == "permuted":
        return [(t + shift) % n_labels for t in true]
    if setting == "half":
        return [(t + shift) % n_labels if i in flip else t for i, t in enumerate(true)]
    return rand


# -- prompts ----------------------------------------------------------------------------------------
@dataclass
class PromptSet:
    """Token-id prompts of one task and setting, with the positions the analysis reads.

    ``query_pos[i]`` are the token indices just before each demo's label and, last, the query's final
    token (``n_demos + 1`` per prompt: entry k is the k-shot prediction); ``label_pos[i]`` the indices
    of each demo label's first token; ``true``/``shown`` the label indices (``true`` has the query's
    label last; ``shown`` covers the demos only).
    """

    task: str
    setting: str
    labels: list[str]
    label_ids: list[int]
    ids: list[list[int]]
    query_pos: list[list[int]]
    label_pos: list[list[int]]
    true: list[list[int]]
    shown: list[list[int]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_demos(self) -> int:
        return len(self.label_pos[0]) if self.label_pos else 0

    def subset(self, idx: Sequence[int]) -> PromptSet:
        pick = list(idx)
        return PromptSet(self.task, self.setting, self.labels, self.label_ids, [self.ids[i] for i in pick],
                         [self.query_pos[i] for i in pick], [self.label_pos[i] for i in pick],
                         [self.true[i] for i in pick], [self.shown[i] for i in pick], dict(self.meta))


def batches(n: int, size: int) -> list[range]:
    """Prompt indices ``0..n-1`` in consecutive batches of at most ``size`` (every reader's batching)."""
    if size < 1:
        raise InputError(f"batch_size must be at least 1, got {size}.")
    return [range(s, min(n, s + size)) for s in range(0, n, size)]


def label_token_ids(model: HookedModel, task: FewShotTask) -> list[int]:
    """First token of ``" " + label`` for every label; raises if two labels share it (naming them)."""
    tok = _tokenizer(model)
    firsts = [tok(" " + lab, add_special_tokens=False)["input_ids"][0] for lab in task.labels]
    seen: dict[int, str] = {}
    for lab, t in zip(task.labels, firsts):
        if t in seen:
            raise InputError(f"Labels {seen[t]!r} and {lab!r} of task {task.name!r} start with the same token "
                             f"{tok.decode([t])!r}; the lens compares first tokens, so labels need distinct ones.")
        seen[t] = lab
    return firsts


def _tokenizer(model: HookedModel) -> Any:
    if model.tokenizer is None:
        raise InputError("Few-shot prompts need a model with a tokenizer.")
    return model.tokenizer


def sample_texts(task: FewShotTask, n_prompts: int, n_demos: int, seed: int) -> list[list[tuple[str, int]]]:
    """``n_prompts`` lists of ``n_demos + 1`` distinct (text, true label index) items, the query last.

    Query labels cycle through the label set (balanced queries); demos are drawn from the other items.
    """
    if n_demos < 1 or n_prompts < 1:
        raise InputError(f"n_demos and n_prompts must be at least 1, got {n_demos} and {n_prompts}.")
    pool = [(t, task.labels.index(lab)) for t, lab in task.pairs]
    if len(pool) < n_demos + 1:
        raise InputError(f"Task {task.name!r} has {len(pool)} examples; {n_demos} demos plus a query need at "
                         f"least {n_demos + 1}.")
    groups = task.by_label()
    rng = random.Random(seed)
    out = []
    for i in range(n_prompts):
        q_label = i % task.n_labels
        query = (rng.choice(groups[q_label]), q_label)
        rest = [p for p in pool if p[0] != query[0]]
        if len(rest) < n_demos:
            raise InputError(f"Task {task.name!r} has only {len(rest)} demos besides the query; asked for "
                             f"{n_demos}.")
        out.append([*rng.sample(rest, n_demos), query])
    return out


def build_prompts(model: HookedModel, task: FewShotTask | str, setting: str, n_prompts: int = 100,
                  n_demos: int = 10, seed: int = 0) -> PromptSet:
    """``n_prompts`` few-shot prompts of ``task`` under ``setting`` (same texts for every setting and seed)."""
    task = load_task(task)
    if setting not in SETTINGS:
        raise InputError(f"Unknown setting {setting!r}; settings: {', '.join(SETTINGS)}.")
    tok = _tokenizer(model)
    label_ids = label_token_ids(model, task)
    label_pieces = [tok(" " + lab, add_special_tokens=False)["input_ids"] for lab in task.labels]
    prefix = tok("", add_special_tokens=True)["input_ids"]  # BOS, when the tokenizer adds one
    ps = PromptSet(task.name, setting, list(task.labels), label_ids, [], [], [], [], [],
                   {"n_demos": n_demos, "seed": seed})
    for i, items in enumerate(sample_texts(task, n_prompts, n_demos, seed)):
        true = [lab for _, lab in items]
        shown = shown_labels(setting, true[:-1], task.n_labels, random.Random(f"{seed}-{i}"))
        ids, qpos, lpos = list(prefix), [], []
        for k, (text, _) in enumerate(items):
            piece = (task.sep if k else "") + task.template.format(text=text)
            ids += tok(piece, add_special_tokens=False)["input_ids"]
            qpos.append(len(ids) - 1)
            if k < n_demos:
                lpos.append(len(ids))
                ids += label_pieces[shown[k]]
        ps.ids.append(ids)
        ps.query_pos.append(qpos)
        ps.label_pos.append(lpos)
        ps.true.append(true)
        ps.shown.append(shown)
    return ps
