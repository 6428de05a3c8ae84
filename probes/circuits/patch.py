"""``EdgePatch``: the edge-level forward as an intervention.

Given a mask over the edges of the model's :class:`EdgeGraph` (True: the edge carries this forward's own value;
False: it carries the ``source`` value, e.g. the corrupt run's node output or a node's mean), every target's
input becomes the sum of its upstream node outputs chosen per edge::

    input_t = sum_u [ mask[t, u] * out_u(this forward) + (1 - mask[t, u]) * source_u ] + biases
            = stream_t - sum_u (1 - mask[t, u]) * (out_u(this forward) - source_u)

where ``stream_t`` is the residual stream the target's block reads (``resid_pre``, ``resid_mid`` or the last
``resid_post``). The node outputs of this forward are read as they are produced (``resid_pre.0``, ``head_out``,
``attn_out`` under post-norms, ``mlp_out``); each target's input then goes through its block's norm and, for a
head, through that head's slice of the q/k/v projection, and is written at ``q``/``k``/``v``, ``ln2`` or
``final_norm``. Everything after that (rotary, q/k norms, attention, the MLP, the residual sums) is the model's
own code. A target whose edges all carry this forward's value is left exactly as the model computed it, so
with every edge kept the forward *is* the plain run, and with none kept it is the source run.

Rows: a forward of ``masks x batch`` rows (mask-major: row ``m * batch + b``) runs ``masks`` masks over the
``batch`` prompts at once; ``source`` is ``[batch, n_nodes, pos, d]`` (one per prompt, aligned with the forward's
padded layout) or ``[n_nodes, d]`` (a mean, for every position and row).

It composes with any other intervention (``Cache``, ``Steer``, ``LensReadout``...) in one forward and saves and
loads like them (the mask and the source are its tensors). It needs whole prompts: no KV cache, no generation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from lmscope.interventions.base import Intervention
from lmscope.interventions.errors import InputError
from lmscope.interventions.positions import ForwardContext
from lmscope.interventions.sites import Site

from .deltas import Deltas
from .graph import EdgeGraph
from .nodes import head_contributions
from .projection import normalise, project_heads

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel


class EdgePatch(Intervention):
    """Run the edge-level forward: edges where ``mask`` is False carry ``source`` instead of this forward's value.

    ``mask``: bool ``[n_targets, n_nodes]`` or ``[masks, n_targets, n_nodes]`` (build it with
    :meth:`EdgeGraph.mask`); ``source``: ``[batch, n_nodes, pos, d_model]`` node outputs (e.g. of the corrupt
    prompts, :func:`~lmscope.probes.circuits.node_outputs`) or ``[n_nodes, d_model]`` means
    (:func:`~lmscope.probes.circuits.node_means`)."""

    def __init__(self, mask: torch.Tensor, source: torch.Tensor) -> None:
        super().__init__(["resid_pre.*", "q.*", "k.*", "v.*", "head_out.*", "ln2.*", "mlp_out.*", "final_norm"])
        if not isinstance(source, torch.Tensor) or source.dim() not in (2, 4):
            raise InputError("EdgePatch's source is a tensor [batch, nodes, pos, d_model] of node outputs or "
                             "[nodes, d_model] of node means.")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise InputError("EdgePatch's mask is a bool tensor [targets, nodes] or [masks, targets, nodes]; "
                             "build one with EdgeGraph.mask(...).")
        self.mask = mask if mask.dim() == 3 else mask[None]
        self.source = source
        #: internal: node outputs of the plain forward on the same prompts, for the layers a partial forward skips
        self.base: torch.Tensor | None = None
        #: internal: make every target's input a separate autograd leaf (``leaves``: group start ->
        #: ``[rows, pos, n_t, d]``), for edge attribution
        self.grad_inputs = False
        self.leaves: dict[int, torch.Tensor] = {}
        self.graph: EdgeGraph | None = None

    def sites(self, model: HookedModel) -> list[Site]:
        names = ["resid_pre.*", "q.*", "k.*", "v.*", "head_out.*", "ln2.*", "mlp_out.*",
                 f"resid_post.{model.n_layers - 1}", "final_norm"]
        if model.arch.attn_post_norm is not None:
            names.append("attn_out.*")
        if "resid_mid" in model.available_kinds:
            names.append("resid_mid.*")
        return model.resolve(names)

    def bind(self, model: HookedModel) -> None:
        graph = EdgeGraph.from_model(model)
        self.mask = graph.check_mask(self.mask)
        if self.source.shape[1 if self.source.dim() == 4 else 0] != graph.n_nodes or \
                self.source.shape[-1] != model.d_model:
            raise InputError(f"EdgePatch's source has shape {tuple(self.source.shape)}; this model has "
                             f"{graph.n_nodes} nodes of width {model.d_model}.")
        self.graph, self._model = graph, model
        super().bind(model)

    def start(self) -> None:
        self._ctx: ForwardContext | None = None
        self.leaves = {}

    # -- one forward ------------------------------------------------------------------------------------------------
    def _begin(self, value: torch.Tensor, ctx: ForwardContext, layer: int) -> None:
        """A new forward reaches its first site: check its rows, set up the node differences (:class:`Deltas`)."""
        if ctx.offset:
            raise InputError("EdgePatch runs on whole prompts: it cannot extend a KV cache (use model.run, not "
                             "generate).")
        graph, rows, pos = self.graph, value.shape[0], value.shape[1]
        assert graph is not None
        n_masks = self.mask.shape[0]
        batch = self.source.shape[0] if self.source.dim() == 4 else rows // n_masks
        if rows != n_masks * batch or (self.source.dim() == 4 and self.source.shape[2] != pos):
            raise InputError(f"EdgePatch got a forward of {rows} rows x {pos} positions; with {n_masks} mask(s) "
                             f"and source {tuple(self.source.shape)} it needs masks x batch rows of the source's "
                             "positions (mask-major).")
        self._ctx = ctx
        self._pre: dict[int, torch.Tensor] = {}
        self._mid: dict[int, torch.Tensor] = {}
        self._raw_heads: dict[int, torch.Tensor] = {}
        self._final: torch.Tensor | None = None
        self._attn: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = {}
        self._batch = batch
        self._mask = self.mask.to(value.device)
        src = self.source.to(value.device, torch.float32)
        src = src if src.dim() == 4 else src[None, :, None, :]
        first = graph.layer_start(layer) if layer > 0 else 0
        if layer > 0 and self.base is None and bool((~self.mask[..., :first]).any()):
            raise InputError(f"The forward starts at layer {layer}; EdgePatch needs the plain run's node outputs "
                             "for the layers below (internal use only).")
        base = None if self.base is None else self.base.to(value.device)
        self._deltas = Deltas(self.mask, src, base, first, batch, pos, value.shape[-1], value.device)

    def _inputs(self, stream: torch.Tensor, targets: range) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Each target's input (pre-norm, float32) ``[rows, pos, n_t, d]`` and the rows it changes ``[rows, n_t]``,
        for targets sharing one upstream prefix; None when no row drops any of their edges (and no gradient is
        asked for)."""
        assert self.graph is not None
        up = int(self.graph.upstream[targets.start])
        dropped = ~self._mask[:, targets.start:targets.stop, :up]  # [masks, n_t, up]
        changed = dropped.any(-1).repeat_interleave(self._batch, 0)  # [rows, n_t]
        if not bool(changed.any()) and not self.grad_inputs:
            return None
        x = stream.float()[:, :, None]  # [rows, pos, 1, d]: every target starts from the stream itself
        if bool(changed.any()):
            x = x - self._deltas.correction(dropped).flatten(0, 1).transpose(1, 2)
        if self.grad_inputs:  # one leaf per target (targets' layout: [rows, pos, n_t, d], contiguous)
            rows, pos, _, d = x.shape
            leaf = torch.zeros(rows, pos, len(targets), d, device=x.device, requires_grad=True)
            self.leaves[targets.start] = leaf
            x = x + leaf
            changed = torch.ones_like(changed)
        return x.expand(-1, -1, len(targets), -1), changed

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor | None:
        layer = site.layer if site.layer is not None else -1
        if ctx is not self._ctx:
            self._begin(value, ctx, max(layer, 0))
        return _HANDLERS[site.kind](self, value, layer)

    def _resid_pre(self, value: torch.Tensor, layer: int) -> None:
        self._pre[layer] = value
        if layer == 0:
            self._deltas.record(0, value)

    def _resid_mid(self, value: torch.Tensor, layer: int) -> None:
        self._mid[layer] = value

    def _resid_post(self, value: torch.Tensor, layer: int) -> None:
        self._final = value

    def _attention_inputs(self, layer: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The normalised inputs of layer ``layer``'s q, k and v targets together ``[rows, pos, n_t, d]`` and the
        rows each changes: one correction product for all of them (they share one upstream prefix), computed at
        the layer's first q/k/v site and kept for the other two."""
        if layer not in self._attn:
            assert self.graph is not None
            first, last = self.graph.layer_targets(layer, "q").start, self.graph.layer_targets(layer, "v").stop
            inputs = self._inputs(self._pre[layer], range(first, last))
            if inputs is not None:
                norm = self._model.arch.input_norm(self._model.layer_module(layer), "attn")
                inputs = normalise(norm, inputs[0], dtype), inputs[1]
            self._attn = {layer: inputs}  # one layer at a time
        return self._attn[layer]

    def _qkv(self, value: torch.Tensor, layer: int, kind: str) -> torch.Tensor | None:
        assert self.graph is not None
        inputs = self._attention_inputs(layer, value.dtype)
        if inputs is None:
            return None
        first = self.graph.layer_targets(layer, "q").start
        targets = self.graph.layer_targets(layer, kind)
        part = slice(targets.start - first, targets.stop - first)
        x, changed = inputs[0][:, :, part], inputs[1][:, part]
        if not bool(changed.any()):
            return None
        heads = torch.arange(len(targets))
        new = project_heads(self._model, layer, kind, x, heads).to(value.dtype)
        return torch.where(changed.to(value.device)[:, None, :, None], new, value)

    def _head_out(self, value: torch.Tensor, layer: int) -> None:
        if self._model.arch.attn_post_norm is not None:
            self._raw_heads[layer] = value  # the contributions need the post-norm's output (attn_out)
            return
        self._set_heads(layer, value)

    def _attn_out(self, value: torch.Tensor, layer: int) -> None:
        self._set_heads(layer, head_contributions(self._model, layer, self._raw_heads.pop(layer), value))

    def _set_heads(self, layer: int, contributions: torch.Tensor) -> None:
        assert self.graph is not None
        self._deltas.record(self.graph.layer_start(layer), contributions)

    def _ln2(self, value: torch.Tensor, layer: int) -> torch.Tensor | None:
        assert self.graph is not None
        stream = self._mid.get(layer, self._pre[layer])
        norm = self._model.arch.input_norm(self._model.layer_module(layer), "mlp")
        return self._write_stream(value, stream, self.graph.layer_targets(layer, "mlp"), norm)

    def _mlp_out(self, value: torch.Tensor, layer: int) -> None:
        assert self.graph is not None
        self._deltas.record(self.graph.mlp_node(layer), value)

    def _final_norm(self, value: torch.Tensor, layer: int) -> torch.Tensor | None:
        assert self.graph is not None and self._final is not None
        t = self.graph.logits_target
        return self._write_stream(value, self._final, range(t, t + 1), self._model.final_norm)

    def _write_stream(self, value: torch.Tensor, stream: torch.Tensor, target: range,
                      norm: torch.nn.Module | None) -> torch.Tensor | None:
        inputs = self._inputs(stream, target)
        if inputs is None:
            return None
        x, changed = inputs
        new = normalise(norm, x[:, :, 0], value.dtype)
        return torch.where(changed.to(value.device)[:, 0, None, None], new, value)

    # -- serialisation --------------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mask": self.mask, "source": self.source}

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> EdgePatch:
        return cls(tensors["mask"], tensors["source"])


#: What EdgePatch does at each site kind it attaches to (read a node output or a stream, or write a target's input).
_HANDLERS: dict[str, Callable[[EdgePatch, torch.Tensor, int], torch.Tensor | None]] = {
    "resid_pre": EdgePatch._resid_pre,
    "q": lambda self, value, layer: self._qkv(value, layer, "q"),
    "k": lambda self, value, layer: self._qkv(value, layer, "k"),
    "v": lambda self, value, layer: self._qkv(value, layer, "v"),
    "head_out": EdgePatch._head_out,
    "attn_out": EdgePatch._attn_out,
    "resid_mid": EdgePatch._resid_mid,
    "ln2": EdgePatch._ln2,
    "mlp_out": EdgePatch._mlp_out,
    "resid_post": EdgePatch._resid_post,
    "final_norm": EdgePatch._final_norm,
}
