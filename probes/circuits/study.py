"""One call that runs the edge-level circuit study of a pair task and reports it: the numbers the circuits notebook
shows, saved as JSON so the notebook (and RESULTS) read them without re-running.

:func:`circuit_study` runs, on one model and one :class:`~lmscope.probes.circuits.tasks.PairTask`:

1. the behaviour: each pair's clean and corrupt metric;
2. EAP and EAP-IG over every edge, timed;
3. exact edge patching on ``n_exact`` sampled edges (a quarter the top edges by |EAP-IG|, a quarter by |EAP|, the
   rest drawn uniformly from all edges, seeded), and each estimate's Pearson and Spearman correlation with it,
   on all sampled edges and on the uniform part alone;
4. the faithfulness curve of the EAP-IG circuits against random circuits of equal size;
5. the node-level comparison: exact head patching (every head's ``head_z`` from the corrupt run into the clean
   run, one head at a time: :func:`lmscope.probes.patching.head_sweep` with ``direction="noise"``) against each
   head's summed outgoing EAP-IG edge scores (a linear estimate of the same intervention), and their overlap in
   the top heads.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from lmscope.interventions.artifacts import atomic_write_text
from lmscope.interventions.errors import InputError

from .attribution import edge_attribution
from .curve import faithfulness_curve
from .scores import EdgeScores
from .tasks import PairTask

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

REPORT = "report.json"


def correlations(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Pearson and Spearman (Pearson of ranks; ties broken by order) of two 1-D tensors."""
    pearson = float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])
    ranks = [x.argsort().argsort().double() for x in (a, b)]
    return {"pearson": pearson, "spearman": float(torch.corrcoef(torch.stack(ranks))[0, 1]), "n": int(a.numel())}


def sample_edges(eap: EdgeScores, ig: EdgeScores, n: int, seed: int) -> tuple[torch.Tensor, int]:
    """``(edge indices into edge_index, how many of them are the uniform part)``: see the module docstring."""
    total = eap.graph.n_edges
    n = min(n, total)
    chosen: list[int] = []
    for scores in (ig, eap):
        for i in scores.edge_values("abs").nan_to_num(-1).argsort(descending=True).tolist():
            if len(chosen) >= (n // 4) * (2 if scores is eap else 1):
                break
            if i not in chosen:
                chosen.append(i)
    rest = torch.ones(total, dtype=torch.bool)
    rest[torch.tensor(chosen, dtype=torch.long)] = False
    pool = rest.nonzero().squeeze(1)
    gen = torch.Generator().manual_seed(seed)
    uniform = pool[torch.randperm(len(pool), generator=gen)[: n - len(chosen)]]
    return torch.cat([torch.tensor(chosen, dtype=torch.long), uniform]), int(len(uniform))


def head_comparison(model: HookedModel, task: PairTask, ig: EdgeScores, k: int = 10) -> dict[str, Any]:
    """Exact noising head patching against each head's summed outgoing EAP-IG edge scores ``[layers, heads]``."""
    from lmscope.probes.patching import head_sweep

    graph = ig.graph
    metrics: Any = task.metrics  # one metric per pair (head_sweep accepts a list)
    sweep = head_sweep(model, task.clean, task.corrupt, metrics, direction="noise", progress=False)
    exact = sweep.by_head("effect").float()  # patched - base, [layers, heads]
    mean = ig.mean.nan_to_num(0.0)
    edges = torch.stack([mean[:, graph.layer_start(layer):graph.layer_start(layer) + graph.n_heads].sum(0)
                         for layer in range(graph.n_layers)])  # [layers, heads]
    top = [set(torch.topk(x.abs().flatten(), k).indices.tolist()) for x in (exact, edges)]
    return {"exact": exact.tolist(), "edges": edges.tolist(), "top_k": k, "top_overlap": len(top[0] & top[1]),
            **{f"{key}": value for key, value in correlations(exact.flatten(), edges.flatten()).items()}}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    return fn(), time.perf_counter() - t0


@dataclass
class CircuitStudy:
    """The study's report (module docstring); :meth:`save` writes ``report.json`` and the EAP-IG scores."""

    model: str
    task: dict[str, Any]
    report: dict[str, Any]
    scores: dict[str, EdgeScores] = field(default_factory=dict)

    def save(self, folder: str | os.PathLike[str], *, per_pair: bool = False) -> Path:
        """Write ``report.json`` and each method's scores (``scores-<method>/``); without ``per_pair`` the scores
        keep only their mean over pairs (one "pair", ``info["pairs_averaged"]`` = how many): enough to draw
        circuits, and a hundredth of the size on SmolLM2."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        for name, scores in self.scores.items():
            if not per_pair and scores.n_pairs > 1:
                scores = EdgeScores(scores.graph, scores.mean[None], scores.method, scores.clean_metric.mean()[None],
                                    scores.corrupt_metric.mean()[None],
                                    {**scores.info, "pairs_averaged": scores.n_pairs})
            scores.save(out / f"scores-{name}")
        atomic_write_text(out / REPORT, json.dumps({"model": self.model, "task": self.task, **self.report},
                                                   indent=1))
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> CircuitStudy:
        path = Path(folder) / REPORT
        if not path.is_file():
            raise InputError(f"{path} does not exist: run circuit_study(...).save({str(folder)!r}) first.")
        data = json.loads(path.read_text(encoding="utf-8"))
        scores = {p.name.removeprefix("scores-"): EdgeScores.load(p) for p in sorted(Path(folder).glob("scores-*"))}
        return cls(data.pop("model"), data.pop("task"), data, scores)


def circuit_study(model: HookedModel, task: PairTask, *, model_name: str = "", n_exact: int = 200,
                  ig_steps: int = 5, n_random: int = 5, sizes: list[int] | None = None, seed: int = 0,
                  batch_size: int = 16, progress: bool = True) -> CircuitStudy:
    """Run the study (module docstring) of ``task`` on ``model``."""
    kw: dict[str, Any] = dict(batch_size=batch_size, progress=progress)
    args = (model, task.clean, task.corrupt, task.metrics)
    eap, t_eap = _timed(lambda: edge_attribution(*args, method="eap", **kw))
    ig, t_ig = _timed(lambda: edge_attribution(*args, method="eap-ig", ig_steps=ig_steps, **kw))
    chosen, n_uniform = sample_edges(eap, ig, n_exact, seed)
    exact, t_exact = _timed(lambda: edge_attribution(*args, method="exact", edges=ig.graph.edge_index[chosen],
                                                     **kw))
    truth, uniform = exact.edge_values()[chosen], slice(len(chosen) - n_uniform, None)
    agreement = {name: {"all": correlations(s.edge_values()[chosen], truth),
                        "uniform": correlations(s.edge_values()[chosen][uniform], truth[uniform])}
                 for name, s in (("eap", eap), ("eap-ig", ig))}
    curve, t_curve = _timed(lambda: faithfulness_curve(*args, ig, sizes, n_random=n_random, seed=seed, **kw))
    heads, t_heads = _timed(lambda: head_comparison(model, task, ig))
    names = ig.graph.edge_names
    report = {
        "behaviour": {"clean": ig.clean_metric.tolist(), "corrupt": ig.corrupt_metric.tolist()},
        "graph": {**ig.graph.to_dict(), "n_nodes": ig.graph.n_nodes, "n_edges": ig.graph.n_edges},
        "sampled": {"edges": [names[i] for i in chosen.tolist()], "n_uniform": n_uniform,
                    "eap": eap.edge_values()[chosen].tolist(), "eap-ig": ig.edge_values()[chosen].tolist(),
                    "exact": truth.tolist(), "exact_stderr": exact.edge_values("stderr")[chosen].tolist()},
        "agreement": agreement, "curve": curve.to_dict(), "heads": heads,
        "top": {"eap": eap.top(15), "eap-ig": ig.top(15), "exact": exact.top(15)},
        "seconds": {"eap": t_eap, "eap-ig": t_ig, "exact": t_exact, "curve": t_curve, "head_sweep": t_heads},
        "settings": {"n_exact": n_exact, "ig_steps": ig_steps, "n_random": n_random, "seed": seed,
                     "batch_size": batch_size, "threads": torch.get_num_threads()},
    }
    return CircuitStudy(model_name or model.arch.name, task.to_dict(), report, {"eap-ig": ig})
