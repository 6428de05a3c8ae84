"""Running binding prompts: candidate log-probs, frozen contexts, accuracy and calibrated accuracy.

Every experiment scores a prompt by the log-probabilities (full-vocabulary log-softmax at the last token) of
the answer tokens of its candidate attributes. Interventions are built per batch by a callback, because
their token spans differ per prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from lmscope.interventions.base import Intervention, Interventions, as_interventions
from lmscope.interventions.cache import Cache
from lmscope.interventions.errors import InputError
from lmscope.interventions.patch import Patch

from .prompts import BindingPrompt

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

MakeInterventions = Callable[[range, "FrozenContext | None"], list[Intervention]]


class FrozenContext:
    """The clean ``resid_pre`` of every layer for a batch, as a ``Patch`` over each row's context positions.

    Applied first, it makes a run recompute only the question part: every context position at every layer
    is overwritten with its clean value (binding interventions then add to or replace some of them).
    """

    def __init__(self, model: HookedModel, prompts: Sequence[BindingPrompt], cache: object) -> None:
        self.prompts = list(prompts)
        self.patch = Patch("resid_pre.*", cache, positions=[slice(0, p.context_len) for p in prompts])
        self.n_layers = model.n_layers


def candidate_logprobs(model: HookedModel, prompts: Sequence[BindingPrompt], candidates: Sequence[Sequence[int]],
                       interventions: Interventions = (), *,
                       token_positions: Sequence[Sequence[int]] | None = None,
                       cache: bool = False) -> tuple[torch.Tensor, object]:
    """Log-probs ``[n, k]`` of each prompt's candidate tokens at its last token (one forward).

    ``token_positions`` gives the position id of every token of every prompt (the model sees these instead
    of 0..n-1; padding gets 0). ``cache=True`` also records ``resid_pre`` of every layer and returns the
    ``ActivationCache``.
    """
    ivs = as_interventions(interventions) + ([Cache("resid_pre.*")] if cache else [])
    pad = model.tokenizer.pad_token_id if model.tokenizer is not None else None
    from lmscope.interventions.inputs import pad as pad_ids

    batch = pad_ids([list(p.ids) for p in prompts], pad if pad is not None else 0, "left")
    position_ids = None
    if token_positions is not None:
        position_ids = torch.zeros_like(batch.input_ids)
        width = batch.input_ids.shape[1]
        for i, (p, pos) in enumerate(zip(prompts, token_positions)):
            if len(pos) != len(p.ids):
                raise InputError(f"Prompt {i} has {len(p.ids)} tokens but {len(pos)} position ids.")
            position_ids[i, width - len(pos):] = torch.as_tensor(list(pos))
    result = model.run(batch, ivs, position_ids=position_ids)
    logp = torch.log_softmax(result.last_logits().float(), dim=-1)
    idx = torch.tensor([list(c) for c in candidates], device=logp.device)
    return logp.gather(1, idx).cpu(), (result.cache if cache else None)


def score(model: HookedModel, prompts: Sequence[BindingPrompt], make: MakeInterventions | None = None, *,
          candidates: Sequence[Sequence[int]] | None = None, batch_size: int = 16, progress: bool = True,
          desc: str = "binding") -> torch.Tensor:
    """Candidate log-probs ``[n, k]`` of all ``prompts`` under the interventions ``make(rows, frozen)`` builds
    (``rows`` = the batch's indices into ``prompts``); see :func:`score_many`."""
    return score_many(model, prompts, {"x": make}, candidates=candidates, batch_size=batch_size,
                      progress=progress, desc=desc)["x"]


def score_many(model: HookedModel, prompts: Sequence[BindingPrompt], makes: dict[str, MakeInterventions | None], *,
               candidates: Sequence[Sequence[int]] | None = None, batch_size: int = 16, progress: bool = True,
               desc: str = "binding") -> dict[str, torch.Tensor]:
    """Candidate log-probs ``[n, k]`` per condition (``None`` = clean run).

    Each batch runs clean once, caching ``resid_pre`` of every layer when some condition needs it: that run
    gives the clean scores and the :class:`FrozenContext` every intervened condition starts from (so the
    question part is all they recompute). One more forward per intervened condition.
    """
    cands = [p.candidates for p in prompts] if candidates is None else list(candidates)
    if len({len(c) for c in cands}) > 1:
        raise InputError("Every prompt must have the same number of candidates.")
    need_cache = any(m is not None for m in makes.values())
    out: dict[str, list[torch.Tensor]] = {k: [] for k in makes}
    for s in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
        chunk, cc = list(prompts[s:s + batch_size]), cands[s:s + batch_size]
        clean, act = candidate_logprobs(model, chunk, cc, cache=need_cache)
        frozen = FrozenContext(model, chunk, act) if need_cache else None
        for name, make in makes.items():
            out[name].append(clean if make is None else
                             candidate_logprobs(model, chunk, cc, make(range(s, s + len(chunk)), frozen))[0])
    return {k: torch.cat(v) if v else torch.zeros(0, 0) for k, v in out.items()}


def accuracy(logprobs: torch.Tensor, correct: Sequence[int]) -> float:
    """Fraction of rows whose argmax candidate is ``correct[row]``."""
    if logprobs.shape[0] == 0:
        return float("nan")
    return float((logprobs.argmax(1) == torch.as_tensor(list(correct))).float().mean())


def attribute_medians(logprobs: torch.Tensor, attributes: Sequence[Sequence[str]]) -> dict[str, float]:
    """Median log-prob of each attribute over calibration rows (queries about an absent name)."""
    values: dict[str, list[float]] = {}
    for row, names in zip(logprobs.tolist(), attributes):
        for v, name in zip(row, names):
            values.setdefault(name, []).append(v)
    return {k: float(np.median(v)) for k, v in values.items()}


def calibrated_accuracy(logprobs: torch.Tensor, attributes: Sequence[Sequence[str]], correct: Sequence[int],
                        medians: dict[str, float]) -> float:
    """Accuracy after subtracting each attribute's calibration median (Feng & Steinhardt's calibration).

    Attributes never seen in calibration fall back to the median of all calibration medians.
    """
    if not medians:
        raise InputError("Calibrated accuracy needs calibration medians (queries about absent names).")
    fallback = float(np.median(list(medians.values())))
    offset = torch.tensor([[medians.get(a, fallback) for a in names] for names in attributes])
    return accuracy(logprobs - offset, correct)
