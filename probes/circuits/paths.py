"""Path patching (Wang et al. 2022, the IOI paper): the effect of senders on the metric *through* chosen receivers.

The senders' outputs are taken from the corrupt run (or the source), but the change may reach only the chosen
inputs of the receivers (a head's q, k or v input, an MLP's input, the logits); every other node reads the
senders' clean outputs. In the edge graph that is exactly one edge-level forward in which the edges from the
senders to the receivers carry the source value and every other edge its own: nodes between senders and
receivers see clean senders, so they stay clean; the receivers' changed outputs then flow on to the logits
as in any forward. With every target as receiver it equals patching the senders' outputs.

Names accept shell patterns: senders ``["A9.6", "A9.9"]`` or ``"A9.*"``; receivers ``["A10.7.q"]``,
``"A1[0-2].*.q"``, ``"M*"``, ``"logits"``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from lmscope.interventions.cache import Cache
from lmscope.interventions.errors import InputError

from .graph import EdgeGraph
from .nodes import node_sites, outputs_from_cache
from .pairs import Metric, apply_metric, prepare_pairs, run_pairs
from .patch import EdgePatch

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel


@dataclass
class PathPatchingResult:
    """``per_pair [groups, pairs]``: ``metric(path patched) - metric(clean)`` for each sender group (one group,
    or one per sender with ``each_sender=True``), with the pairs' clean and corrupt metrics."""

    senders: list[list[str]]
    receivers: list[str]
    per_pair: torch.Tensor
    clean_metric: torch.Tensor
    corrupt_metric: torch.Tensor

    @property
    def effect(self) -> torch.Tensor:
        """``[groups]``: the mean effect over pairs."""
        return self.per_pair.mean(1)

    @property
    def stderr(self) -> torch.Tensor:
        """``[groups]``: the paired standard error of the mean effect (0 for one pair)."""
        n = self.per_pair.shape[1]
        return self.per_pair.std(1, unbiased=True) / n ** 0.5 if n > 1 else torch.zeros(self.per_pair.shape[0])

    @property
    def normalized(self) -> torch.Tensor:
        """``[groups]``: the mean effect as a fraction of the mean corrupt - clean gap (1 = the whole gap)."""
        gap = float((self.corrupt_metric - self.clean_metric).mean())
        return self.effect / gap if gap else torch.full_like(self.effect, float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return {"senders": self.senders, "receivers": self.receivers, "effect": self.effect.tolist(),
                "stderr": self.stderr.tolist(), "normalized": self.normalized.tolist(),
                "per_pair": self.per_pair.tolist(), "clean_metric": self.clean_metric.tolist(),
                "corrupt_metric": self.corrupt_metric.tolist()}


def _match(names: list[str], patterns: str | Sequence[str], what: str, examples: str) -> list[int]:
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not patterns:
        raise InputError(f"Give at least one {what} ({examples}).")
    out: list[int] = []
    for pattern in patterns:
        hits = [i for i, name in enumerate(names) if fnmatch.fnmatchcase(name, str(pattern))]
        if not hits:
            raise InputError(f"No {what} matches {pattern!r}; {what}s look like {examples}.")
        out += [i for i in hits if i not in out]
    return out


def path_mask(graph: EdgeGraph, senders: Sequence[int], receivers: Sequence[int]) -> torch.Tensor:
    """The ``[n_targets, n_nodes]`` mask in which exactly the sender -> receiver edges are dropped."""
    mask = torch.ones(graph.n_targets, graph.n_nodes, dtype=torch.bool)
    s = torch.tensor(list(senders), dtype=torch.long)
    for t in receivers:
        mask[t, s[s < int(graph.upstream[t])]] = False
    return mask


def path_patch(model: HookedModel, clean: Any, corrupt: Any, metric: Metric | Sequence[Metric],
               senders: str | Sequence[str], receivers: str | Sequence[str], *, each_sender: bool = False,
               source: str = "corrupt", batch_size: int = 16) -> PathPatchingResult:
    """Path-patch ``senders`` (node names or patterns) through ``receivers`` (target names or patterns).

    ``each_sender=True`` measures every matched sender separately (all in as few forwards as ``batch_size``
    rows allow), e.g. every head of a layer into the name movers' queries. ``source``: ``"corrupt"`` (each
    pair's corrupt run) or ``"mean"`` (each node's mean over the corrupt prompts' tokens).
    """
    graph = EdgeGraph.from_model(model)
    send = _match(graph.nodes, senders, "sender node", "'embed', 'A9.6', 'A9.*', 'M3'")
    recv = _match(graph.targets, receivers, "receiver target", "'A10.7.q', 'A11.*.k', 'M4', 'logits'")
    if not any(u < int(graph.upstream[t]) for t in recv for u in send):
        raise InputError("No sender feeds any receiver: a sender must run before the receiver's block "
                         "(an earlier layer, or the same layer's heads for its MLP on sequential blocks).")
    pairs = prepare_pairs(model, clean, corrupt, metric)
    cache = Cache(node_sites(model))
    corrupt_metric = apply_metric(pairs.metrics, run_pairs(model, pairs.corrupt, [cache]))[0].cpu()
    src = outputs_from_cache(model, graph, cache)
    if source == "mean":
        real = pairs.corrupt.attention_mask.to(src.device).bool()
        src = torch.einsum("bupd,bp->ud", src, real.float() / real.sum())
    elif source != "corrupt":
        raise InputError(f"source must be 'corrupt' or 'mean', got {source!r}.")
    clean_metric = apply_metric(pairs.metrics, run_pairs(model, pairs.clean, []))[0].cpu()
    groups = [[u] for u in send] if each_sender else [send]
    masks = torch.stack([path_mask(graph, g, recv) for g in groups])
    per = max(1, batch_size // pairs.n)
    effects = []
    for i in range(0, len(groups), per):
        chunk = masks[i:i + per]
        logits = run_pairs(model, pairs.rows(pairs.clean, len(chunk)), [EdgePatch(chunk, src)])
        effects.append(apply_metric(pairs.metrics, logits).cpu() - clean_metric[None])
    return PathPatchingResult([[graph.nodes[u] for u in g] for g in groups], [graph.targets[t] for t in recv],
                              torch.cat(effects), clean_metric, corrupt_metric)
