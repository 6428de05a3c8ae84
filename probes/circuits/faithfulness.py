"""How much of the model's behaviour a circuit keeps: faithfulness over clean/corrupt pairs.

A circuit runs as the edge-level forward on the clean prompts (:class:`EdgePatch`): its edges carry the clean
run's values, every other edge the source value (``"corrupt"``: each pair's corrupt run; ``"mean"``: each node's
mean output over the corrupt prompts' tokens; or given node values). With per-pair metrics ``m_circuit``,
``m_clean`` (the plain clean run) and ``m_base`` (every edge carrying the source: the plain corrupt run for
``source="corrupt"``, the edge-level forward with no edge kept otherwise)::

    faithfulness = (mean(m_circuit) - mean(m_base)) / (mean(m_clean) - mean(m_base))

a **ratio of means** over pairs: 1 when the circuit recovers the whole clean-vs-base gap, 0 when it recovers
none. Each pair's own ratio is kept too (NaN where that pair's gap is 0), but the headline is the ratio of means,
which small per-pair gaps cannot blow up. Its standard error is the paired delta-method one,
``std(a_p - F b_p) / (sqrt(P) |mean(b)|)`` with ``a_p = m_circuit - m_base``, ``b_p = m_clean - m_base`` (NaN
for one pair).

Several circuits are evaluated in one forward as a batched mask: rows are ``masks x pairs`` (mask-major), as
many as ``batch_size`` allows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from tqdm.auto import tqdm

from lmscope.interventions.errors import InputError
from lmscope.interventions.progress import bar_disable

from .attribution import clean_corrupt_runs, resolve_source
from .circuit import Circuit, whole_number
from .graph import EdgeGraph
from .pairs import Metric, Pairs, apply_metric, prepare_pairs, run_pairs
from .patch import EdgePatch

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel


def json_float(x: float) -> float | None:
    """``x``, or None for NaN (JSON has no NaN)."""
    return None if math.isnan(x) else x


@dataclass
class Faithfulness:
    """One circuit's faithfulness (module docstring): the ratio of means, its paired standard error, each pair's
    ratio and the per-pair metrics it came from (``[pairs]`` each)."""

    faithfulness: float
    stderr: float
    per_pair: torch.Tensor
    circuit_metric: torch.Tensor
    clean_metric: torch.Tensor
    corrupt_metric: torch.Tensor
    n_edges: int
    source: str

    @property
    def gap(self) -> float:
        """``mean(m_clean) - mean(m_base)``: the difference the faithfulness is a fraction of."""
        return float((self.clean_metric.double() - self.corrupt_metric.double()).mean())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: every field (NaN as None)."""
        return {"faithfulness": self.faithfulness, "stderr": json_float(self.stderr), "n_edges": self.n_edges,
                "source": self.source, "gap": self.gap, "per_pair": [json_float(x) for x in self.per_pair.tolist()],
                "circuit_metric": self.circuit_metric.tolist(), "clean_metric": self.clean_metric.tolist(),
                "corrupt_metric": self.corrupt_metric.tolist()}

    def __repr__(self) -> str:
        return f"Faithfulness({self.faithfulness:.3f} ± {self.stderr:.3f}, {self.n_edges} edges, {self.source})"


def faithfulness_from(circuit_metric: torch.Tensor, clean: torch.Tensor, base: torch.Tensor, n_edges: int,
                      source: str) -> Faithfulness:
    """The :class:`Faithfulness` of per-pair metrics (``[pairs]`` each)."""
    a = circuit_metric.double() - base.double()
    b = clean.double() - base.double()
    gap = float(b.mean())
    if gap == 0:
        raise InputError("The clean and corrupt runs have the same mean metric: faithfulness (a fraction of their "
                         "difference) is undefined; choose pairs (or a metric) that the corruption changes.")
    value = float(a.mean()) / gap
    n = int(a.numel())
    err = float((a - value * b).std(unbiased=True)) / (n ** 0.5 * abs(gap)) if n > 1 else math.nan
    per_pair = torch.where(b != 0, a / torch.where(b != 0, b, torch.ones_like(b)), torch.full_like(b, math.nan))
    return Faithfulness(value, err, per_pair.float(), circuit_metric.float(), clean.float(), base.float(),
                        n_edges, source)


def as_masks(graph: EdgeGraph, circuits: Any) -> tuple[torch.Tensor, list[int]]:
    """``(masks [M, T, U] bool, edges per mask)`` from circuits, bool masks ``[T, U]`` / ``[M, T, U]``, or a
    list of either."""
    items = list(circuits) if isinstance(circuits, (list, tuple)) else [circuits]
    masks: list[torch.Tensor] = []
    for item in items:
        if isinstance(item, Circuit):
            if item.graph != graph:
                raise InputError(f"The circuit was built for {item.graph.to_dict()}; this model's graph is "
                                 f"{graph.to_dict()}.")
            masks.append(item.mask()[None])
        elif isinstance(item, torch.Tensor):
            masks.append(graph.check_mask(item).cpu())
        else:
            raise InputError(f"Give a Circuit or a bool edge mask [targets, nodes] (or a list of them), got "
                             f"{type(item).__name__}.")
    if not masks:
        raise InputError("No circuit to evaluate: give a Circuit, a mask or a non-empty list of them.")
    stacked = torch.cat(masks)
    return stacked, (stacked & graph.valid).flatten(1).sum(1).tolist()


def circuit_metrics(model: HookedModel, pairs: Pairs, masks: torch.Tensor, source: torch.Tensor, batch_size: int,
                    show: bool = False) -> torch.Tensor:
    """``[masks, pairs]``: each pair's metric under each mask's edge-level forward on its clean prompt, in
    forwards of at most ``batch_size`` rows (``masks x pairs``, mask-major; pairs split when they alone exceed
    it)."""
    n, n_masks = pairs.n, int(masks.shape[0])
    per_pairs = min(n, batch_size)
    per_masks = max(1, batch_size // per_pairs)
    chunks = [(p, m) for p in range(0, n, per_pairs) for m in range(0, n_masks, per_masks)]
    out = torch.empty(n_masks, n)
    for p0, m0 in tqdm(chunks, desc="circuits", disable=bar_disable(show), leave=False):
        idx = list(range(p0, min(n, p0 + per_pairs)))
        sub = pairs.select(idx)
        src = source[torch.tensor(idx, device=source.device)] if source.dim() == 4 else source
        chunk = masks[m0:m0 + per_masks]
        logits = run_pairs(model, sub.rows(sub.clean, int(chunk.shape[0])), [EdgePatch(chunk, src)])
        out[m0:m0 + int(chunk.shape[0]), p0:p0 + len(idx)] = apply_metric(sub.metrics, logits).float().cpu()
    return out


def evaluate_masks(model: HookedModel, clean: Any, corrupt: Any, metric: Metric | Sequence[Metric], circuits: Any,
                   source: Any, batch_size: int, progress: bool | None) -> list[Faithfulness]:
    """Shared body of :func:`evaluate_circuit` / :func:`evaluate_circuits` (and the faithfulness curve)."""
    batch_size = whole_number(batch_size, "batch_size", 1)
    graph = EdgeGraph.from_model(model)
    masks, sizes = as_masks(graph, circuits)
    pairs = prepare_pairs(model, clean, corrupt, metric)
    runs = clean_corrupt_runs(model, pairs, graph)
    src = resolve_source(model, runs, source, pairs)
    base_run = isinstance(source, str) and source == "corrupt"
    if not base_run:  # the base is every edge carrying the source: one more mask, in the same forwards
        masks = torch.cat([masks, graph.check_mask(graph.mask())])
    show = bool(progress) if progress is not None else masks.shape[0] * pairs.n > 256
    metrics = circuit_metrics(model, pairs, masks, src, batch_size, show)
    base = runs["corrupt_metric"].float() if base_run else metrics[-1]
    name = source if isinstance(source, str) else "custom"
    return [faithfulness_from(metrics[i], runs["clean_metric"].float(), base, sizes[i], name)
            for i in range(len(sizes))]


def evaluate_circuit(model: HookedModel, clean: Any, corrupt: Any, metric: Metric | Sequence[Metric],
                     circuit_or_mask: Circuit | torch.Tensor, *, source: Any = "corrupt", batch_size: int = 16,
                     progress: bool | None = None) -> Faithfulness:
    """The faithfulness of one circuit (a :class:`Circuit` or a bool ``[targets, nodes]`` mask, True = in the
    circuit) over the clean/corrupt pairs (module docstring). ``source``: ``"corrupt"``, ``"mean"`` or node values
    (as in :func:`~lmscope.probes.circuits.edge_attribution`)."""
    if isinstance(circuit_or_mask, torch.Tensor) and circuit_or_mask.dim() != 2:
        raise InputError("evaluate_circuit takes one mask [targets, nodes]; use evaluate_circuits for a batch "
                         f"[masks, targets, nodes] (got shape {tuple(circuit_or_mask.shape)}).")
    return evaluate_masks(model, clean, corrupt, metric, circuit_or_mask, source, batch_size, progress)[0]


def evaluate_circuits(model: HookedModel, clean: Any, corrupt: Any, metric: Metric | Sequence[Metric],
                      circuits: Sequence[Circuit | torch.Tensor] | torch.Tensor, *, source: Any = "corrupt",
                      batch_size: int = 16, progress: bool | None = None) -> list[Faithfulness]:
    """The faithfulness of several circuits (a list of circuits or masks, or masks ``[M, targets, nodes]``), all
    run in the same batched forwards (``masks x pairs`` rows, at most ``batch_size`` per forward)."""
    return evaluate_masks(model, clean, corrupt, metric, circuits, source, batch_size, progress)
