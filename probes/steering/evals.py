"""Offline evaluations for steering sweeps: a behaviour score and a multiple-choice helpfulness score.

An *evaluation* is any callable ``(model, interventions) -> float | dict`` (a dict
must hold ``"score"``); :func:`as_eval` also accepts prompt/answer lists. The
shipped ones batch their prompts: one ``model.run`` per batch, with the
interventions attached, so a sweep costs ``scales x batches`` forwards.

- :class:`BehaviourEval` (alignment-style): ``P(behaviour tokens) - P(opposite
  tokens)`` at the next token (Wolf et al. use ``P(refuse) - P(agree)``), by
  default renormalised over the two token sets so it spans ``[-1, 1]``.
- :class:`ChoiceEval` (helpfulness): probability of the correct choice,
  renormalised over the choices, plus accuracy. ``mode="letter"`` scores the
  letters A-D after a listed question; ``mode="cloze"`` scores the first token of
  each choice's text. SmolLM2-135M is at chance with letters (it cannot bind
  letters to options) but well above chance in cloze form, so the shipped set uses cloze.

Shipped data (``probes/steering/data``): ``sentiment_pairs.jsonl`` (32 contrast pairs),
``sentiment_eval.jsonl`` (24 neutral review openings), ``mcq_easy.jsonl`` (48
easy four-choice questions, answers balanced over A-D).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

import torch

from lmscope.interventions.base import Interventions, as_interventions
from lmscope.interventions.errors import InputError

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel, Intervention

DATA_DIR = Path(__file__).parent / "data"
EvalResult = Union[float, dict[str, float]]
EvalFn = Callable[["HookedModel", Sequence["Intervention"]], EvalResult]


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (blank lines skipped); errors name the line."""
    rows = []
    p = Path(path)
    if not p.is_file():
        raise InputError(f"No such file: {p}.")
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise InputError(f"{p}:{n} is not valid JSON: {err.msg}.") from None
    if not rows:
        raise InputError(f"{p} has no rows.")
    return rows


def load_pairs(path: str | os.PathLike[str] | None = None) -> tuple[list[str], list[str]]:
    """Contrast pairs from a JSONL file with ``positive``/``negative`` keys (default: the shipped sentiment pairs)."""
    p = Path(path) if path is not None else DATA_DIR / "sentiment_pairs.jsonl"
    rows = read_jsonl(p)
    for n, r in enumerate(rows, 1):
        if not isinstance(r, dict) or not isinstance(r.get("positive"), str) or not isinstance(r.get("negative"), str):
            raise InputError(f"{p} row {n} needs string fields 'positive' and 'negative'.")
    return [r["positive"] for r in rows], [r["negative"] for r in rows]


def _next_token_probs(model: HookedModel, prompts: list[str], interventions: Interventions,
                      batch_size: int) -> torch.Tensor:
    """[n_prompts, vocab] next-token probabilities (float32, CPU); one run per batch."""
    ivs = as_interventions(interventions)
    out = []
    for i in range(0, len(prompts), batch_size):
        res = model.run(prompts[i:i + batch_size], ivs)
        out.append(res.last_logits().float().softmax(-1).cpu())
    return torch.cat(out)


def _token_ids(model: HookedModel, tokens: Sequence[str | int], what: str) -> list[int]:
    if not tokens:
        raise InputError(f"{what} token list is empty.")
    return [int(t) if isinstance(t, int) else model.token_id(t) for t in tokens]


@dataclass
class BehaviourEval:
    """Next-token behaviour score: ``P(positive tokens) - P(negative tokens)`` averaged over prompts.

    With ``renormalize`` (default) the difference is divided by their sum, so
    the score is in ``[-1, 1]`` even when the model puts little mass on either set.
    """

    prompts: list[str]
    positive_tokens: list[str | int]
    negative_tokens: list[str | int]
    renormalize: bool = True
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not self.prompts:
            raise InputError("BehaviourEval needs at least one prompt.")
        if not self.positive_tokens or not self.negative_tokens:
            raise InputError("BehaviourEval needs positive and negative behaviour tokens.")

    def __call__(self, model: HookedModel, interventions: Interventions = ()) -> dict[str, float]:
        pos = _token_ids(model, self.positive_tokens, "positive")
        neg = _token_ids(model, self.negative_tokens, "negative")
        probs = _next_token_probs(model, list(self.prompts), interventions, self.batch_size)
        pp, pn = probs[:, pos].sum(-1), probs[:, neg].sum(-1)
        diff = (pp - pn) / (pp + pn).clamp_min(1e-12) if self.renormalize else pp - pn
        return {"score": float(diff.mean()), "p_positive": float(pp.mean()), "p_negative": float(pn.mean())}

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike[str] | None = None, n: int | None = None,
                   **kwargs: Any) -> BehaviourEval:
        """Rows ``{"prompt", "positive": [tokens], "negative": [tokens]}`` (token sets from the first row)."""
        rows = read_jsonl(Path(path) if path is not None else DATA_DIR / "sentiment_eval.jsonl")[:n]
        return cls([r["prompt"] for r in rows], list(rows[0]["positive"]), list(rows[0]["negative"]), **kwargs)


LETTERS = "ABCDEFGHIJ"


@dataclass
class ChoiceEval:
    """Multiple-choice questions: renormalised probability of the correct choice, and accuracy.

    ``answers`` are letters (``"B"``) or indices. ``mode="cloze"`` prompts
    ``Question: ...\\nAnswer:`` and scores the first token of each choice (they
    must differ); ``mode="letter"`` lists the choices and scores ``" A"``, ``" B"``...
    """

    questions: list[str]
    choices: list[list[str]]
    answers: list[str | int]
    mode: str = "cloze"
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not self.questions:
            raise InputError("ChoiceEval needs at least one question.")
        if not len(self.questions) == len(self.choices) == len(self.answers):
            raise InputError(f"ChoiceEval got {len(self.questions)} questions, {len(self.choices)} choice lists "
                             f"and {len(self.answers)} answers; they must match.")
        if self.mode not in ("cloze", "letter"):
            raise InputError(f"mode must be 'cloze' or 'letter', got {self.mode!r}.")
        self._answer_idx = []
        for i, (a, ch) in enumerate(zip(self.answers, self.choices)):
            idx = LETTERS.index(a) if isinstance(a, str) and len(a) == 1 and a in LETTERS else a
            if not isinstance(idx, int) or not 0 <= idx < len(ch):
                raise InputError(f"Question {i}: answer {a!r} is not one of its {len(ch)} choices.")
            self._answer_idx.append(idx)

    @property
    def chance(self) -> float:
        """Expected score and accuracy of uniform guessing."""
        return float(sum(1 / len(c) for c in self.choices) / len(self.choices))

    def prompt(self, i: int) -> str:
        if self.mode == "cloze":
            return f"Question: {self.questions[i]}\nAnswer:"
        listed = "\n".join(f"{LETTERS[j]}. {c}" for j, c in enumerate(self.choices[i]))
        return f"Question: {self.questions[i]}\n{listed}\nAnswer:"

    def choice_ids(self, model: HookedModel, i: int) -> list[int]:
        if self.mode == "letter":
            return [model.token_id(f" {LETTERS[j]}") for j in range(len(self.choices[i]))]
        if model.tokenizer is None:
            raise InputError("cloze scoring needs a tokenizer.")
        ids = [model.tokenizer(" " + c, add_special_tokens=False)["input_ids"][0] for c in self.choices[i]]
        if len(set(ids)) != len(ids):
            raise InputError(f"Question {i}: choices {self.choices[i]} share a first token; cloze scoring needs "
                             "distinct first tokens (reword them, or use mode='letter').")
        return ids

    def __call__(self, model: HookedModel, interventions: Interventions = ()) -> dict[str, float]:
        ids = [self.choice_ids(model, i) for i in range(len(self.questions))]
        probs = _next_token_probs(model, [self.prompt(i) for i in range(len(self.questions))], interventions,
                                  self.batch_size)
        correct, hits = [], []
        for i, row in enumerate(ids):
            p = probs[i, row]
            p = p / p.sum().clamp_min(1e-30)
            correct.append(float(p[self._answer_idx[i]]))
            hits.append(float(int(p.argmax()) == self._answer_idx[i]))
        n = len(correct)
        return {"score": sum(correct) / n, "accuracy": sum(hits) / n, "chance": self.chance}

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike[str] | None = None, n: int | None = None,
                   **kwargs: Any) -> ChoiceEval:
        """Rows ``{"question", "choices": [...], "answer": "B"}`` (default: the shipped easy set)."""
        rows = read_jsonl(Path(path) if path is not None else DATA_DIR / "mcq_easy.jsonl")[:n]
        return cls([r["question"] for r in rows], [list(r["choices"]) for r in rows], [r["answer"] for r in rows],
                   **kwargs)


@dataclass
class AnswerEval:
    """Prompt/answer pairs: mean probability of each answer's first token, and how often it is the argmax."""

    prompts: list[str]
    answers: list[str]
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not self.prompts or len(self.prompts) != len(self.answers):
            raise InputError(f"AnswerEval needs as many answers as prompts (got {len(self.prompts)} prompts, "
                             f"{len(self.answers)} answers), and at least one.")

    def __call__(self, model: HookedModel, interventions: Interventions = ()) -> dict[str, float]:
        if model.tokenizer is None:
            raise InputError("AnswerEval needs a tokenizer.")
        ids = [model.tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in self.answers]
        probs = _next_token_probs(model, list(self.prompts), interventions, self.batch_size)
        idx = torch.tensor(ids)
        p = probs[torch.arange(len(ids)), idx]
        return {"score": float(p.mean()), "accuracy": float((probs.argmax(-1) == idx).float().mean())}


def sentiment_eval(n: int | None = None, **kwargs: Any) -> BehaviourEval:
    """The shipped alignment-style eval: positive-minus-negative sentiment of the next word."""
    return BehaviourEval.from_jsonl(None, n, **kwargs)


def mcq_eval(n: int | None = None, mode: str = "cloze", **kwargs: Any) -> ChoiceEval:
    """The shipped helpfulness eval: easy four-choice questions."""
    return ChoiceEval.from_jsonl(None, n, mode=mode, **kwargs)


def as_eval(obj: Any) -> EvalFn:
    """Normalise an evaluation: a callable ``(model, interventions)``, or prompt/answer lists.

    Accepts a callable, a ``(prompts, answers)`` tuple, a list of ``(prompt, answer)``
    pairs, or a dict with ``prompts`` and ``answers``.
    """
    if callable(obj):
        return obj
    if isinstance(obj, dict) and "prompts" in obj and "answers" in obj:
        return AnswerEval(list(obj["prompts"]), list(obj["answers"]))
    if isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(x, (list, tuple)) for x in obj):
        return AnswerEval(list(obj[0]), list(obj[1]))
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(x, (list, tuple)) and len(x) == 2 for x in obj):
        return AnswerEval([x[0] for x in obj], [x[1] for x in obj])
    raise InputError("An evaluation must be a callable (model, interventions) -> float | dict, a (prompts, "
                     f"answers) tuple, a list of (prompt, answer) pairs or a dict; got {type(obj).__name__}.")


def run_eval(fn: EvalFn, model: HookedModel, interventions: Interventions) -> dict[str, float]:
    """Call an evaluation and return a dict with at least ``score``."""
    out = fn(model, as_interventions(interventions))  # a user's callable always gets a list
    if isinstance(out, dict):
        if "score" not in out:
            raise InputError(f"An evaluation returned a dict without 'score' (keys: {sorted(out)}).")
        return {k: float(v) for k, v in out.items()}
    return {"score": float(out)}
