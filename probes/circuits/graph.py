"""The computational graph edge-level circuits work on: nodes, their inputs (targets) and the edges between them.

Nodes are what writes into the residual stream: the input embedding, every attention head ``A{L}.{H}`` and every
MLP ``M{L}``. Targets are what reads from it, each through its own copy of the stream: a head's query input
``A{L}.{H}.q``, its key and value inputs ``A{L}.{G}.k`` / ``A{L}.{G}.v`` (``G`` indexes key/value heads: on a
grouped-query model one k/v target serves the ``n_heads / n_kv_heads`` query heads of its group), the MLP
input ``M{L}`` and the logits ``logits`` (the final norm's input). An edge ``u -> t`` is the part of target
``t``'s input that node ``u`` wrote: the residual stream is a sum, so the input of ``t`` is the sum of its
upstream nodes' outputs (plus biases, which no edge changes), and a target reads it through its block's norm.

Upstream of a target are the nodes that run before it in the forward: for layer ``L``'s attention targets the
embedding and every node of layers ``< L``; for layer ``L``'s MLP also layer ``L``'s heads, except on parallel
blocks (GPT-NeoX/Pythia, GPT-J, Falcon, Cohere), where attention and MLP read the same stream. In forward order
every target's upstream set is therefore a *prefix* of the node list, and a mask over edges is a dense
``[targets, nodes]`` matrix of which only each row's prefix (``upstream[t]`` entries) means anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Iterable

import torch

from lmscope.interventions.errors import InputError

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

#: The kinds of target, in their order within a layer.
TARGET_KINDS = ("q", "k", "v", "mlp")


@dataclass(frozen=True)
class EdgeGraph:
    """Nodes, targets and edges of a model with ``n_layers`` layers of ``n_heads`` query heads (``n_kv_heads``
    key/value heads) and attention + MLP blocks (``parallel``: both read the layer's input).

    Node ``i`` / target ``t`` are indices into :attr:`nodes` / :attr:`targets`; ``upstream[t]`` is the number
    of nodes that feed target ``t`` (they are nodes ``0 .. upstream[t] - 1``)."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel: bool

    @classmethod
    def from_model(cls, model: HookedModel) -> EdgeGraph:
        """The graph of ``model`` (which must expose the q/k/v sites edges are written at)."""
        missing = {"q", "k", "v", "head_out", "ln2"} - set(model.available_kinds)
        if missing:
            raise InputError(f"Edge-level circuits need the sites {', '.join(sorted(missing))}, which the "
                             f"{model.arch.name} adapter does not provide.")
        return cls(model.n_layers, model.n_heads, model.n_kv_heads,
                   bool(model.arch.parallel_residual(model.hf_model.config)))

    # -- nodes ----------------------------------------------------------------------------------------------------
    def layer_start(self, layer: int) -> int:
        """Index of layer ``layer``'s first head node (``n_nodes`` for ``layer == n_layers``)."""
        return 1 + layer * (self.n_heads + 1)

    def head_node(self, layer: int, head: int) -> int:
        return self.layer_start(layer) + head

    def mlp_node(self, layer: int) -> int:
        return self.layer_start(layer) + self.n_heads

    @property
    def n_nodes(self) -> int:
        return self.layer_start(self.n_layers)

    @cached_property
    def nodes(self) -> list[str]:
        """Node names in forward order: ``embed``, then per layer ``A{L}.{H}`` for each head and ``M{L}``."""
        out = ["embed"]
        for layer in range(self.n_layers):
            out += [f"A{layer}.{h}" for h in range(self.n_heads)] + [f"M{layer}"]
        return out

    # -- targets --------------------------------------------------------------------------------------------------
    @property
    def targets_per_layer(self) -> int:
        return self.n_heads + 2 * self.n_kv_heads + 1

    def target_start(self, layer: int) -> int:
        """Index of layer ``layer``'s first target (its first query input)."""
        return layer * self.targets_per_layer

    def layer_targets(self, layer: int, kind: str) -> range:
        """Target indices of one kind (``q``, ``k``, ``v`` or ``mlp``) in layer ``layer``."""
        first = self.target_start(layer)
        h, g = self.n_heads, self.n_kv_heads
        spans = {"q": (0, h), "k": (h, h + g), "v": (h + g, h + 2 * g), "mlp": (h + 2 * g, h + 2 * g + 1)}
        a, b = spans[kind]
        return range(first + a, first + b)

    @property
    def logits_target(self) -> int:
        return self.n_layers * self.targets_per_layer

    @property
    def n_targets(self) -> int:
        return self.logits_target + 1

    @cached_property
    def targets(self) -> list[str]:
        """Target names in forward order: per layer ``A{L}.{H}.q`` .., ``A{L}.{G}.k`` .., ``A{L}.{G}.v`` ..,
        ``M{L}``; then ``logits``."""
        out = []
        for layer in range(self.n_layers):
            out += [f"A{layer}.{h}.q" for h in range(self.n_heads)]
            out += [f"A{layer}.{g}.{kind}" for kind in "kv" for g in range(self.n_kv_heads)]
            out.append(f"M{layer}")
        return out + ["logits"]

    @cached_property
    def upstream(self) -> torch.Tensor:
        """``[n_targets]`` long: how many nodes (a prefix of :attr:`nodes`) feed each target."""
        counts = []
        for layer in range(self.n_layers):
            attn = self.layer_start(layer)
            counts += [attn] * (self.n_heads + 2 * self.n_kv_heads)
            counts.append(attn if self.parallel else attn + self.n_heads)
        counts.append(self.n_nodes)
        return torch.tensor(counts, dtype=torch.long)

    def target_layer(self, target: int) -> int:
        """The layer a target reads in (``n_layers`` for the logits)."""
        return min(target // self.targets_per_layer, self.n_layers)

    # -- edges ----------------------------------------------------------------------------------------------------
    @cached_property
    def valid(self) -> torch.Tensor:
        """``[n_targets, n_nodes]`` bool: True where an edge exists."""
        return torch.arange(self.n_nodes)[None, :] < self.upstream[:, None]

    @property
    def n_edges(self) -> int:
        return int(self.upstream.sum())

    @cached_property
    def edge_index(self) -> torch.Tensor:
        """``[n_edges, 2]`` long: ``(target, node)`` of every edge, ordered by target then node."""
        return self.valid.nonzero()

    def edge_name(self, target: int, node: int) -> str:
        return f"{self.nodes[node]}->{self.targets[target]}"

    @cached_property
    def edge_names(self) -> list[str]:
        return [self.edge_name(int(t), int(u)) for t, u in self.edge_index]

    def parse_edge(self, name: str) -> tuple[int, int]:
        """``"A3.1->M5"`` -> ``(target, node)``; an :class:`InputError` naming what is wrong otherwise."""
        if not isinstance(name, str) or "->" not in name:
            raise InputError(f"An edge is named 'node->target' (e.g. 'A3.1->M5', 'embed->A0.2.q'), got {name!r}.")
        node, target = (part.strip() for part in name.split("->", 1))
        u, t = self.node_index(node), self.target_index(target)
        if u >= int(self.upstream[t]):
            raise InputError(f"{node} does not feed {target}: it runs after it (or in parallel with it).")
        return t, u

    def node_index(self, name: str) -> int:
        index = self._node_index.get(name)
        if index is None:
            raise InputError(f"Unknown node {name!r}: nodes are 'embed', 'A<layer>.<head>' (heads 0.."
                             f"{self.n_heads - 1}) and 'M<layer>' (layers 0..{self.n_layers - 1}).")
        return index

    def target_index(self, name: str) -> int:
        index = self._target_index.get(name)
        if index is None:
            raise InputError(f"Unknown target {name!r}: targets are 'A<layer>.<head>.q', 'A<layer>.<kv head>.k' / "
                             f"'.v' (kv heads 0..{self.n_kv_heads - 1}), 'M<layer>' and 'logits'.")
        return index

    @cached_property
    def _node_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.nodes)}

    @cached_property
    def _target_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.targets)}

    # -- masks ----------------------------------------------------------------------------------------------------
    def mask(self, edges: Iterable[Any] = (), *, keep: bool = True) -> torch.Tensor:
        """A ``[n_targets, n_nodes]`` bool mask (True = the edge carries this forward's own value) in which the
        given ``edges`` (names or ``(target, node)`` pairs) are ``keep`` and every other edge is ``not keep``."""
        out = torch.full((self.n_targets, self.n_nodes), not keep, dtype=torch.bool)
        for edge in edges:
            t, u = self.parse_edge(edge) if isinstance(edge, str) else (int(edge[0]), int(edge[1]))
            if not (0 <= t < self.n_targets and 0 <= u < int(self.upstream[t])):
                raise InputError(f"No edge (target {t}, node {u}) in this graph.")
            out[t, u] = keep
        return out | ~self.valid

    def check_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """``mask`` as a bool ``[masks, n_targets, n_nodes]`` tensor (a single ``[n_targets, n_nodes]`` mask gets a
        leading axis); entries outside the edges are set True (they mean nothing)."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise InputError("An edge mask is a bool tensor [targets, nodes] (or [masks, targets, nodes]); "
                             "build one with EdgeGraph.mask(...).")
        if mask.dim() == 2:
            mask = mask[None]
        if mask.dim() != 3 or tuple(mask.shape[1:]) != (self.n_targets, self.n_nodes):
            raise InputError(f"An edge mask for this model has shape [masks, {self.n_targets}, {self.n_nodes}] "
                             f"(targets x nodes), got {tuple(mask.shape)}.")
        return mask | ~self.valid.to(mask.device)

    def to_dict(self) -> dict[str, Any]:
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
                "parallel": self.parallel}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EdgeGraph:
        try:
            return cls(int(data["n_layers"]), int(data["n_heads"]), int(data["n_kv_heads"]), bool(data["parallel"]))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"Not an edge graph description ({err}): it needs n_layers, n_heads, n_kv_heads and "
                             "parallel.") from None
