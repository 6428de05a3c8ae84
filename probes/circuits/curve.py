"""Faithfulness against circuit size: the top-k circuits of edge scores beside random circuits of the same size.

For each size ``k`` the curve takes the ``k`` edges of largest ``|mean score|`` (pruned to the edges on a path
from the input to the logits when ``prune``) and ``n_random`` random circuits with **the same number of edges
as that evaluated circuit**, drawn uniformly from all the graph's edges and **not pruned**. Pruning a random set
would shrink it to a handful of edges (random edges rarely form input-to-logits paths), so it would no longer
be the same size; and with ``source="corrupt"`` pruning would not change its metric anyway: the pruned edges
carry the corrupt value either way, except under post-attention norms (:mod:`~lmscope.probes.circuits.pruning`).
Random circuit ``r`` of size ``n`` is ``Circuit.random(graph, n, seed=(seed, k, r))``: the same seed gives the
same circuits, whatever the other sizes.

Every circuit of the curve (top-k and random) runs in the same batched forwards (``masks x pairs`` rows, at
most ``batch_size`` per forward). The curve reports the smallest ``k`` whose circuit keeps at least
``threshold`` (default 80%) of the clean-vs-corrupt gap, or, when none does, the best fraction reached.
"""

from __future__ import annotations

import math
import os
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from lmscope.interventions.errors import InputError
from lmscope.probes.plotting import Series, line_plot, save_figure

from .circuit import Circuit, whole_number
from .faithfulness import Faithfulness, evaluate_masks, json_float
from .pairs import Metric

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lmscope.interventions.model import HookedModel

    from .scores import EdgeScores


@dataclass
class FaithfulnessCurve:
    """Per size ``k`` (``sizes``): the top-k circuit and its :class:`Faithfulness`, and the random circuits of
    the same number of edges with theirs (module docstring)."""

    sizes: list[int]
    circuits: list[Circuit]
    top: list[Faithfulness]
    random_circuits: list[list[Circuit]]
    random: list[list[Faithfulness]]
    threshold: float
    prune: bool
    seed: int

    @property
    def n_edges(self) -> list[int]:
        """Edges of each evaluated top-k circuit (after pruning)."""
        return [c.n_edges for c in self.circuits]

    @property
    def faithfulness(self) -> torch.Tensor:
        """``[sizes]``: the top-k circuits' faithfulness."""
        return torch.tensor([f.faithfulness for f in self.top], dtype=torch.float64)

    @property
    def random_faithfulness(self) -> torch.Tensor:
        """``[sizes, n_random]``: the random circuits' faithfulness."""
        n_random = len(self.random[0]) if self.random else 0
        values = [f.faithfulness for row in self.random for f in row]
        return torch.tensor(values, dtype=torch.float64).view(len(self.sizes), n_random)

    @property
    def smallest(self) -> int | None:
        """The smallest ``k`` whose top-k circuit keeps ``>= threshold`` of the gap (None when none does)."""
        hits = [k for k, f in sorted(zip(self.sizes, self.top)) if f.faithfulness >= self.threshold]
        return hits[0] if hits else None

    @property
    def best(self) -> tuple[int, float]:
        """``(k, faithfulness)`` of the most faithful top-k circuit (the smallest such ``k`` on ties)."""
        k, f = max(zip(self.sizes, self.top), key=lambda kf: (kf[1].faithfulness, -kf[0]))
        return k, f.faithfulness

    def summary(self) -> str:
        """One line: the smallest size reaching the threshold, or the best fraction reached."""
        k = self.smallest
        if k is not None:
            f = self.top[self.sizes.index(k)]
            return (f"top-{k} ({f.n_edges} edges) keeps {f.faithfulness:.1%} of the gap "
                    f"(>= {self.threshold:.0%}, the smallest size that does)")
        best_k, best_f = self.best
        return f"no size keeps {self.threshold:.0%} of the gap; the best is top-{best_k} with {best_f:.1%}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: per size its edges, faithfulness, stderr and the random circuits' values; the summary."""
        rows = [{"k": k, "n_edges": f.n_edges, "faithfulness": f.faithfulness, "stderr": json_float(f.stderr),
                 "random": [r.faithfulness for r in rand]}
                for k, f, rand in zip(self.sizes, self.top, self.random)]
        return {"sizes": rows, "threshold": self.threshold, "smallest": self.smallest, "best": list(self.best),
                "prune": self.prune, "seed": self.seed, "n_random": len(self.random[0]) if self.random else 0,
                "source": self.top[0].source if self.top else None, "summary": self.summary()}

    def plot(self, path: str | os.PathLike[str] | None = None, *, title: str | None = None) -> Figure:
        """Faithfulness against the circuit's edges: top-k (band: ± 1 s.e.) and the random circuits' mean (band:
        their min to max), the threshold as a dashed line; written atomically to ``path`` when given."""
        x = torch.tensor(self.n_edges, dtype=torch.float64)
        y = self.faithfulness
        err = torch.tensor([f.stderr for f in self.top], dtype=torch.float64)
        series: dict[str, Any] = {"top-k": Series(y, band=None if err.isnan().any() else (y - err, y + err))}
        rand = self.random_faithfulness
        if rand.shape[1]:
            series[f"random (mean of {rand.shape[1]})"] = Series(rand.mean(1), band=(rand.min(1)[0], rand.max(1)[0]),
                                                                 style="s--")
        fig = line_plot(x, series, xlabel="edges in the circuit", ylabel="faithfulness (fraction of the gap)",
                        reference={f"{self.threshold:.0%} of the gap": self.threshold},
                        title=title or textwrap.fill(self.summary(), 70))
        if float(x.max()) >= 20 * max(1.0, float(x.min())):  # sizes over decades: a log axis (0 edges: symlog)
            ax = fig.axes[0]
            if float(x.min()) >= 1:
                ax.set_xscale("log")
            else:
                ax.set_xscale("symlog", linthresh=1.0)
                ax.set_xlim(left=0.0)
        if path is not None:
            save_figure(fig, path)
        return fig


def default_sizes(n: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... below ``n``, then ``n`` itself."""
    out = [m * 10 ** e for e in range(int(math.log10(max(n, 1))) + 1) for m in (1, 2, 5) if m * 10 ** e < n]
    return out + [n]


def faithfulness_curve(model: HookedModel, clean: Any, corrupt: Any, metric: Metric | Sequence[Metric],
                       scores: EdgeScores, sizes: Sequence[int] | None = None, *, n_random: int = 5, seed: int = 0,
                       prune: bool = True, source: Any = "corrupt", threshold: float = 0.8, batch_size: int = 16,
                       progress: bool | None = None) -> FaithfulnessCurve:
    """The faithfulness curve of ``scores``' top-k circuits against random ones (module docstring).

    ``sizes``: the ``k`` values (default 1, 2, 5, 10, ... up to every scored edge); ``n_random`` random circuits
    per size, seeded by ``seed``; ``prune`` the top-k circuits; ``source`` as in :func:`evaluate_circuit`;
    ``threshold``: the fraction of the gap the reported smallest size must keep."""
    scored = int(scores.scored().sum())
    ks = default_sizes(scored) if sizes is None else [whole_number(k, "each size", 1) for k in sizes]
    if not ks:
        raise InputError("sizes is empty: give the circuit sizes (numbers of top edges) to evaluate.")
    if max(ks) > scored:
        raise InputError(f"sizes go up to {max(ks)} edges; only {scored} edges have a score.")
    n_random, seed = whole_number(n_random, "n_random"), whole_number(seed, "seed")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise InputError(f"threshold must be a fraction in (0, 1], got {threshold!r}.")
    tops = [scores.circuit(k=k, prune=prune) for k in ks]
    randoms = [[Circuit.random(scores.graph, c.n_edges, seed=(seed, k, r)) for r in range(n_random)]
               for k, c in zip(ks, tops)]
    flat = tops + [c for row in randoms for c in row]
    results = evaluate_masks(model, clean, corrupt, metric, flat, source, batch_size, progress)
    top, rest = results[:len(ks)], results[len(ks):]
    rand = [rest[i * n_random:(i + 1) * n_random] for i in range(len(ks))]
    return FaithfulnessCurve(ks, tops, top, randoms, rand, float(threshold), prune, seed)

