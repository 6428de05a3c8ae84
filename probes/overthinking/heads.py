"""False-induction and prefix-matching scores of every head, from attention patterns.

False-induction score (Halawi et al.; the authors' ``prime``): at the position just before demo k's
label, ``same`` is the attention mass on earlier demos' label tokens that show the *same* label as demo
k, ``all`` the mass on every earlier label token, and ``score = same - (all - same) / (n_labels - 1)``:
positive when a head looks back at earlier occurrences of the label the demo is about to show. It is
averaged over demos k = 1..n-1 and prompts; on permuted prompts the shown label is the false one.

Prefix-matching score (the induction-head signature): from the same query positions, the mass on
tokens that *follow* an earlier occurrence of the query token (here the ``:`` of ``Answer:``, so
these are mostly earlier label tokens, whichever they are).

Every score comes from patterns recorded at the query positions only, in the same forward for all
heads; :func:`naive_head_scores` is the one-forward-per-head loop kept as a benchmark baseline and a
test oracle. :func:`top_heads` picks the best-scoring heads to ablate, :func:`random_head_sets` the paper's
control (random heads of the same number).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from lmscope.interventions.cache import Cache
from lmscope.interventions.errors import InputError
from lmscope.interventions.progress import bar_disable

from .tasks import batches

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel, RunResult

    from .tasks import PromptSet


def false_induction_terms(pattern: torch.Tensor, label_cols: torch.Tensor, shown: torch.Tensor, n_labels: int,
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-demo ``(score, same, all)`` of every head: each ``[batch, heads, n_demos - 1]`` (demos 1..n-1).

    ``pattern [batch, heads, n_q, keys]`` holds rows at the positions before each demo's label (row k for
    demo k; extra rows, e.g. the final query, are ignored); ``label_cols [batch, n_demos]`` are the key
    columns of each demo's label token; ``shown [batch, n_demos]`` the label index each demo shows.
    """
    b, h, _, _ = pattern.shape
    d = label_cols.shape[1]
    rows = pattern[:, :, :d, :].float()  # [b, h, k, keys]
    idx = label_cols[:, None, None, :].expand(b, h, d, d).to(rows.device)
    to_labels = rows.gather(-1, idx)  # [b, h, k (query demo), j (earlier label)]
    earlier = torch.ones(d, d, dtype=torch.bool).tril(-1).to(rows.device)  # j < k
    same_lab = (shown[:, :, None] == shown[:, None, :]).to(rows.device) & earlier  # [b, k, j]
    all_mass = (to_labels * earlier).sum(-1)
    same_mass = (to_labels * same_lab[:, None]).sum(-1)
    score = same_mass - (all_mass - same_mass) / (n_labels - 1)
    return score[:, :, 1:], same_mass[:, :, 1:], all_mass[:, :, 1:]


def prefix_matching_terms(pattern: torch.Tensor, query_cols: torch.Tensor, input_ids: torch.Tensor,
                          real: torch.Tensor) -> torch.Tensor:
    """Per-query prefix-matching mass ``[batch, heads, n_q]``: attention on keys ``c <= q`` whose previous
    token equals the query token (``input_ids[c - 1] == input_ids[q]``); padding never matches."""
    b, _, nq, keys = pattern.shape
    ids = input_ids.to(pattern.device)
    prev = torch.full_like(ids, -1)
    prev[:, 1:] = torch.where(real[:, :-1].to(ids.device).bool(), ids[:, :-1], -1)
    q_tok = ids.gather(1, query_cols.to(ids.device))  # [b, nq]
    cols = torch.arange(keys, device=ids.device)
    match = (prev[:, None, :] == q_tok[:, :, None]) & (cols[None, None, :] <= query_cols[:, :, None].to(ids.device))
    match &= real[:, None, :].to(ids.device).bool()
    return (pattern.float() * match[:, None]).sum(-1)


@dataclass
class HeadScoreSums:
    """Running sums of per-head scores ``[n_layers, n_heads]`` and how many terms they add."""

    score: torch.Tensor
    same: torch.Tensor
    all: torch.Tensor
    prefix: torch.Tensor
    n_terms: int = 0
    n_prefix: int = 0

    @classmethod
    def empty(cls, n_layers: int, n_heads: int) -> HeadScoreSums:
        z = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        return cls(z.clone(), z.clone(), z.clone(), z.clone())

    def means(self) -> dict[str, torch.Tensor]:
        """Averages ``[n_layers, n_heads]``: ``false_induction``, ``same``, ``all``, ``prefix_matching``."""
        n, m = max(self.n_terms, 1), max(self.n_prefix, 1)
        return {"false_induction": (self.score / n).float(), "same": (self.same / n).float(),
                "all": (self.all / n).float(), "prefix_matching": (self.prefix / m).float()}


def _columns(prompts: PromptSet, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pad_left = (mask.shape[1] - mask.sum(1)).cpu()  # left padding
    qcols = torch.tensor(prompts.query_pos) + pad_left[:, None]
    lcols = torch.tensor(prompts.label_pos) + pad_left[:, None]
    return qcols, lcols


def add_layer(sums: HeadScoreSums, layer: int, pattern: torch.Tensor, prompts: PromptSet, input_ids: torch.Tensor,
              mask: torch.Tensor, heads: Any = slice(None)) -> None:
    """Add one layer's pattern (query rows at ``prompts.query_pos``) to the sums (``heads`` selects rows)."""
    qcols, lcols = _columns(prompts, mask)
    shown = torch.tensor(prompts.shown)
    score, same, all_ = false_induction_terms(pattern, lcols, shown, len(prompts.labels))
    pref = prefix_matching_terms(pattern, qcols, input_ids, mask)
    sums.score[layer, heads] += score.sum((0, 2)).double().cpu()
    sums.same[layer, heads] += same.sum((0, 2)).double().cpu()
    sums.all[layer, heads] += all_.sum((0, 2)).double().cpu()
    sums.prefix[layer, heads] += pref.sum((0, 2)).double().cpu()


def accumulate_head_scores(sums: HeadScoreSums, res: RunResult, prompts: PromptSet, n_layers: int) -> None:
    """Add a batch's scores: ``res`` cached ``attn_pattern.*`` at ``prompts.query_pos`` (left padding)."""
    mask = res.batch.attention_mask.cpu()
    ids = res.batch.input_ids.cpu()
    for layer in range(n_layers):
        add_layer(sums, layer, res.cache[f"attn_pattern.{layer}"].cpu(), prompts, ids, mask)
    sums.n_terms += len(prompts) * max(prompts.n_demos - 1, 0)
    sums.n_prefix += len(prompts) * (prompts.n_demos + 1)


@torch.no_grad()
def batched_head_scores(model: HookedModel, prompts: PromptSet, batch_size: int = 8,
                        progress: bool = False) -> dict[str, torch.Tensor]:
    """Every head's scores from one forward per batch, patterns read at the query positions only."""
    from tqdm.auto import tqdm

    sums = HeadScoreSums.empty(model.n_layers, model.n_heads)
    for rows in tqdm(batches(len(prompts), batch_size), desc="head scores", disable=bar_disable(progress), leave=False):
        sub = prompts.subset(rows)
        res = model.run(sub.ids, [Cache("attn_pattern.*", positions=sub.query_pos)])
        accumulate_head_scores(sums, res, sub, model.n_layers)
    return sums.means()


@torch.no_grad()
def naive_head_scores(model: HookedModel, prompts: PromptSet, batch_size: int = 8,
                      progress: bool = False) -> dict[str, torch.Tensor]:
    """The slow baseline: one forward per head, caching that layer's whole pattern, reading one head."""
    from tqdm.auto import tqdm

    sums = HeadScoreSums.empty(model.n_layers, model.n_heads)
    heads = [(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)]
    for layer, h in tqdm(heads, desc="naive head scores", disable=bar_disable(progress), leave=False):
        for rows in batches(len(prompts), batch_size):
            sub = prompts.subset(rows)
            res = model.run(sub.ids, [Cache(f"attn_pattern.{layer}")])
            mask, ids = res.batch.attention_mask.cpu(), res.batch.input_ids.cpu()
            full = res.cache[f"attn_pattern.{layer}"].cpu()[:, h:h + 1]
            qcols, _ = _columns(sub, mask)
            rows_q = full.gather(2, qcols[:, None, :, None].expand(-1, 1, -1, full.shape[-1]))
            add_layer(sums, layer, rows_q, sub, ids, mask, heads=slice(h, h + 1))
    n = len(prompts)
    sums.n_terms, sums.n_prefix = n * max(prompts.n_demos - 1, 0), n * (prompts.n_demos + 1)
    return sums.means()


def top_heads(scores: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """The ``k`` (layer, head) pairs with the highest score, best first."""
    flat = scores.flatten().topk(min(k, scores.numel())).indices
    return [(int(i) // scores.shape[1], int(i) % scores.shape[1]) for i in flat]


def random_head_sets(n_layers: int, n_heads: int, k: int, n_draws: int, seed: int = 0,
                     exclude: Sequence[tuple[int, int]] = ()) -> list[list[tuple[int, int]]]:
    """``n_draws`` sets of ``k`` distinct random heads (the paper's control), avoiding ``exclude``."""
    pool = [(layer, h) for layer in range(n_layers) for h in range(n_heads) if (layer, h) not in set(exclude)]
    if k > len(pool):
        raise InputError(f"Cannot draw {k} random heads from {len(pool)}.")
    rng = random.Random(seed)
    return [sorted(rng.sample(pool, k)) for _ in range(n_draws)]
