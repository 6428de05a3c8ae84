"""Edge-level circuits on a real model: what EAP, EAP-IG and exact edge patching cost, against baselines measured
in the same run.

- EAP / EAP-IG over the IOI pairs, against one plain forward + backward over the same pairs (the gradient of the
  summed metric with respect to the input embeddings); the issue's targets: EAP about that cost, EAP-IG with 5
  steps about 5x.
- Exact edge patching of ``--edges`` edges (the EAP-IG top half, a random half), batched, against the loop it
  replaces: one full forward over the pairs per edge (timed on ``--loop-edges`` edges, per edge); edges/s.
- Memory: peak RSS growth of one edge-level forward (a random half of the edges dropped) against a plain forward
  over the same rows.

    .venv/bin/python benchmarks/bench_circuits.py [--model smollm2|gemma-3-270m] [--pairs 24] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from memory import rss_kb  # noqa: E402


def timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def load(name: str):  # type: ignore[no-untyped-def]
    from lmscope.interventions import HookedModel

    return HookedModel.default() if name == "smollm2" else HookedModel.from_pretrained(name)


def plain_forward_backward(model, task) -> None:  # type: ignore[no-untyped-def]
    from lmscope.interventions import Cache
    from lmscope.probes.circuits.pairs import apply_metric, prepare_pairs, run_pairs

    pairs = prepare_pairs(model, task.clean, task.corrupt, task.metrics)
    emb = Cache("embed", detach=False)
    with torch.enable_grad():
        logits = run_pairs(model, pairs.clean, [emb], grad=True)
        apply_metric(pairs.metrics, logits).sum().backward(inputs=[emb["embed"]])


def child_peak(args: argparse.Namespace, which: str) -> float:
    """Peak RSS (MiB) of a fresh process that runs one ``which`` forward (allocator caches of this process would
    hide the difference)."""
    out = subprocess.run([sys.executable, __file__, "--model", args.model, "--pairs", str(args.pairs), "--threads",
                          str(args.threads), "--measure", which], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace) -> None:
    """Child process: the process's peak RSS (MiB) after loading the model and the pairs and running one plain or
    edge-level forward over them (the edge-level one also computes its source, the corrupt node outputs)."""
    from lmscope.probes.circuits import EdgeGraph, EdgePatch, node_outputs
    from lmscope.probes.circuits.pairs import prepare_pairs, run_pairs
    from lmscope.probes.circuits.tasks import ioi_pairs

    model = load(args.model)
    task = ioi_pairs(model, args.pairs)
    pairs = prepare_pairs(model, task.clean, task.corrupt, task.metrics)
    graph = EdgeGraph.from_model(model)
    ivs = []
    if args.measure == "edge":  # its input: the corrupt node outputs (the plain forward needs none)
        source, _ = node_outputs(model, pairs.corrupt.input_ids)
        mask = torch.rand(graph.n_targets, graph.n_nodes, generator=torch.Generator().manual_seed(0)) < 0.5
        ivs = [EdgePatch(mask, source)]
    run_pairs(model, pairs.clean, ivs)
    print(rss_kb("VmHWM") / 1024)


def correlations(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    pearson = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    ranks = [x.argsort().argsort().float() for x in (a, b)]
    return pearson, float(torch.corrcoef(torch.stack(ranks))[0, 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", choices=["smollm2", "gemma-3-270m"])
    p.add_argument("--pairs", type=int, default=24)
    p.add_argument("--edges", type=int, default=200)
    p.add_argument("--loop-edges", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--measure", choices=["plain", "edge"], help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.measure:
        measure(args)
        return
    from lmscope.probes.circuits import EdgeGraph, EdgePatch, edge_attribution, node_outputs
    from lmscope.probes.circuits.pairs import prepare_pairs, run_pairs
    from lmscope.probes.circuits.tasks import ioi_pairs

    print(f"load average before: {os.getloadavg()}", flush=True)
    model = load(args.model)
    task = ioi_pairs(model, args.pairs)
    graph = EdgeGraph.from_model(model)
    print(f"{args.model}: {graph.n_nodes} nodes, {graph.n_targets} targets, {graph.n_edges} edges; {len(task)} IOI "
          f"pairs; {args.threads} threads", flush=True)
    plain_forward_backward(model, task)  # warm-up
    _, base = timed(lambda: plain_forward_backward(model, task))
    kw = dict(batch_size=args.batch_size, progress=False)
    warm = ioi_pairs(model, 2, seed=1)  # first calls pay one-off allocation and kernel set-up: time them apart
    for method in ("eap", "eap-ig", "exact"):
        t0 = time.perf_counter()
        edge_attribution(model, warm.clean, warm.corrupt, warm.metrics, method=method,
                         edges=graph.edge_index[:4] if method == "exact" else None, **kw)
        print(f"first call of {method} (2 pairs, warm-up): {time.perf_counter() - t0:.1f} s", flush=True)
    eap, t_eap = timed(lambda: edge_attribution(model, task.clean, task.corrupt, task.metrics, method="eap", **kw))
    ig, t_ig = timed(lambda: edge_attribution(model, task.clean, task.corrupt, task.metrics, method="eap-ig", **kw))
    print(f"forward+backward over the pairs: {base:.2f} s; EAP {t_eap:.2f} s ({t_eap / base:.1f}x); "
          f"EAP-IG (5 steps) {t_ig:.2f} s ({t_ig / base:.1f}x)", flush=True)

    gen = torch.Generator().manual_seed(0)
    order = ig.edge_values("abs").argsort(descending=True)
    top = order[: args.edges // 2]
    rest = order[args.edges // 2:]
    chosen = torch.cat([top, rest[torch.randperm(len(rest), generator=gen)[: args.edges - len(top)]]])
    edges = graph.edge_index[chosen]
    exact, t_exact = timed(lambda: edge_attribution(model, task.clean, task.corrupt, task.metrics, method="exact",
                                                    edges=edges, **kw))
    pairs = prepare_pairs(model, task.clean, task.corrupt, task.metrics)
    source, _ = node_outputs(model, pairs.corrupt.input_ids)

    def one_edge(t: int, u: int) -> None:
        mask = torch.ones(graph.n_targets, graph.n_nodes, dtype=torch.bool)
        mask[t, u] = False
        run_pairs(model, pairs.clean, [EdgePatch(mask, source)])

    loop_edges = edges[: args.loop_edges].tolist()
    one_edge(*loop_edges[0])
    _, t_loop = timed(lambda: [one_edge(t, u) for t, u in loop_edges])
    per_edge_loop = t_loop / len(loop_edges)
    per_edge = t_exact / len(edges)
    print(f"exact edge patching: {len(edges)} edges x {len(task)} pairs in {t_exact:.1f} s ({1 / per_edge:.1f} "
          f"edges/s); loop {per_edge_loop:.2f} s/edge ({1 / per_edge_loop:.2f} edges/s): "
          f"{per_edge_loop / per_edge:.1f}x", flush=True)
    a = exact.edge_values()[chosen]
    for name, scores in (("EAP", eap), ("EAP-IG", ig)):
        pr, sr = correlations(scores.edge_values()[chosen], a)
        print(f"{name} vs exact on {len(edges)} edges: Pearson {pr:.3f}, Spearman {sr:.3f}", flush=True)

    plain, edged = (child_peak(args, which) for which in ("plain", "edge"))
    print(f"memory (peak RSS of a fresh process: model, {len(task)} pairs, one forward): plain forward {plain:.0f} "
          f"MiB, edge-level forward with its source (a random half of the edges dropped) {edged:.0f} MiB "
          f"(+{edged - plain:.0f} MiB)", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
