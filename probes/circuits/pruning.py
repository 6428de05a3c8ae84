"""Pruning a set of edges to the edges on a path from the input to the logits.

A set of kept edges (a bool ``[n_targets, n_nodes]`` mask) is pruned by this rule:

- **reached from the input**: ``embed`` is always reached; any other node ``w`` is reached when some kept edge
  ``u -> t`` enters one of ``w``'s targets from a reached node ``u``. A head ``A{L}.{H}`` is fed by its query
  target ``A{L}.{H}.q`` and by the key and value targets of its KV group, ``A{L}.{G}.k`` / ``A{L}.{G}.v`` with
  ``G = H // (n_heads // n_kv_heads)``: on a grouped-query model one kept edge into a k/v target reaches every
  head of the group. An MLP ``M{L}`` is fed by its target ``M{L}``.
- **reaching the logits**: a target reaches the logits when it is ``logits`` or when a node it feeds reaches
  them (a k/v target: any head of its group); a node reaches the logits when some kept edge leaves it into a
  target that reaches them.
- an edge ``u -> t`` survives when it is kept, ``u`` is reached from the input and ``t`` reaches the logits.

The survivors are exactly the kept edges that lie on some path ``embed -> ... -> logits`` of kept edges (each
step entering a target of the next node), so pruning twice changes nothing. With ``source="corrupt"`` pruning
does not change what the edge-level forward computes (up to float rounding): a node no kept path reaches from
the input sees only corrupt inputs and so outputs its corrupt value, which its dropped edges carry anyway, and
an edge whose target reaches the logits through no kept path changes nothing the logits read. One exception:
under post-attention norms (Gemma 2/3, OLMo-2) a head's contribution is scaled by the norm of its whole
layer's attention output (:mod:`~lmscope.probes.circuits.nodes`), so an unreached head beside reached ones no
longer writes exactly its corrupt value, and pruning can change the metric there.

Both sweeps visit nodes once, in forward order and in reverse: every target's upstream nodes come before the
nodes it feeds, so a node's status is final when it is visited.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from lmscope.interventions.errors import InputError

from .graph import EdgeGraph


@lru_cache(maxsize=32)
def fed_nodes(graph: EdgeGraph) -> tuple[tuple[int, ...], ...]:
    """For each target, the nodes it feeds (``()`` for the logits): a query target its head, a k/v target every
    head of its KV group, an MLP target its MLP."""
    out: list[tuple[int, ...]] = []
    group = graph.n_heads // graph.n_kv_heads
    for layer in range(graph.n_layers):
        out += [(graph.head_node(layer, h),) for h in range(graph.n_heads)]
        for _ in "kv":
            out += [tuple(graph.head_node(layer, g * group + i) for i in range(group))
                    for g in range(graph.n_kv_heads)]
        out.append((graph.mlp_node(layer),))
    return tuple(out + [()])


@lru_cache(maxsize=32)
def feeding_targets(graph: EdgeGraph) -> tuple[tuple[int, ...], ...]:
    """For each node, the targets that feed it (``()`` for ``embed``): the inverse of :func:`fed_nodes`."""
    out: list[list[int]] = [[] for _ in range(graph.n_nodes)]
    for t, nodes in enumerate(fed_nodes(graph)):
        for w in nodes:
            out[w].append(t)
    return tuple(tuple(ts) for ts in out)


def check_edges(graph: EdgeGraph, edges: torch.Tensor, what: str = "edges") -> torch.Tensor:
    """``edges`` as a CPU bool ``[n_targets, n_nodes]`` mask that is False off the graph's edges."""
    if not isinstance(edges, torch.Tensor) or edges.dtype != torch.bool:
        got = f"a {edges.dtype} tensor" if isinstance(edges, torch.Tensor) else type(edges).__name__
        raise InputError(f"{what} is a bool tensor [targets, nodes] (True = the edge is in the circuit), got {got}.")
    if tuple(edges.shape) != (graph.n_targets, graph.n_nodes):
        raise InputError(f"{what} for this graph has shape [{graph.n_targets}, {graph.n_nodes}] (targets x nodes), "
                         f"got {tuple(edges.shape)}.")
    return edges.detach().cpu() & graph.valid


def reached_from_input(graph: EdgeGraph, kept: torch.Tensor) -> torch.Tensor:
    """``[n_nodes]`` bool: the nodes reached from ``embed`` through ``kept`` edges (module docstring)."""
    reached = torch.zeros(graph.n_nodes, dtype=torch.bool)
    reached[0] = True
    feeders = feeding_targets(graph)
    for w in range(1, graph.n_nodes):
        ts = list(feeders[w])
        reached[w] = bool((kept[ts] & reached).any())
    return reached


def reaching_logits(graph: EdgeGraph, kept: torch.Tensor) -> torch.Tensor:
    """``[n_targets]`` bool: the targets from which ``kept`` edges lead to the logits (module docstring)."""
    live = torch.zeros(graph.n_targets, dtype=torch.bool)
    live[graph.logits_target] = True
    feeders = feeding_targets(graph)
    for u in range(graph.n_nodes - 1, 0, -1):
        if bool((kept[:, u] & live).any()):
            live[list(feeders[u])] = True
    return live


def prune(graph: EdgeGraph, kept: torch.Tensor) -> torch.Tensor:
    """The ``kept`` edges (bool ``[n_targets, n_nodes]``) that lie on a path from the input to the logits."""
    kept = check_edges(graph, kept)
    return kept & reached_from_input(graph, kept)[None, :] & reaching_logits(graph, kept)[:, None]
