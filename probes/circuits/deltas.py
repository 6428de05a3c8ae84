"""The node differences an edge-level forward needs, stored once per prompt where they cannot vary by mask.

A dropped edge ``u -> t`` moves target ``t``'s input by ``-(out_u - source_u)``, where ``out_u`` is node ``u``'s
output *in this forward* (row). :class:`Deltas` keeps that difference only for the nodes some mask drops, in two
parts:

- nodes below the forward's first layer (a partial forward that starts at layer ``L``): their outputs are the
  plain run's (``base``) in every row, so the difference is stored once per prompt ``[k, batch, pos, d]`` and
  shared by every mask;
- nodes computed in this forward: per row ``[masks, k, batch, pos, d]``, filled as the forward produces them.

The node axis comes before the batch so that a correction is one matrix product over contiguous memory
(``[targets, k] x [k, batch * pos * d]``), with no copy of the stored differences.

Rows are mask-major (row ``m * batch + b``). A correction for a group of targets that share one upstream prefix
is one einsum of the dropped-edge indicator with each part, so a batch of single-edge masks (exact edge
patching) costs the einsum over the few nodes they drop, not over every node of every row.
"""

from __future__ import annotations

from typing import Callable

import torch


def _select(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values [b, U, pos, d]`` (or a broadcast ``[1, U, 1, d]``) at node ``index``, as ``[b, k, pos, d]``."""
    return values[:, index.to(values.device)]


class Deltas:
    """``out_u - source_u`` for the nodes dropped by any of ``mask`` ``[masks, T, U]`` (see the module docstring).

    ``source``: ``[batch, U, pos, d]`` or a broadcast view ``[1, U, 1, d]``; ``base``: the plain run's node
    outputs ``[batch, U, pos, d]`` for the nodes below ``first`` (the first node this forward computes).

    A correction reads only the differences it needs: for a group of targets, ``sum_u dropped * delta_u`` over the
    nodes some target of the group drops, or, when fewer nodes are kept than dropped (a small circuit), the
    running sum of every recorded difference minus ``sum_u kept * delta_u`` over the kept nodes. ``complement``
    forces one form (None: the cheaper one; both give the same sum up to float rounding)."""

    def __init__(self, mask: torch.Tensor, source: torch.Tensor, base: torch.Tensor | None, first: int,
                 batch: int, pos: int, d: int, device: torch.device, complement: bool | None = None) -> None:
        self.masks, self.batch, self.complement = mask.shape[0], batch, complement
        dropped = (~mask).any(1).any(0).cpu()  # [U]
        self.nodes = dropped.nonzero().squeeze(1)  # the nodes any mask drops, ascending
        self.source = source
        fixed, live = self.nodes[self.nodes < first], self.nodes[self.nodes >= first]
        self.fixed_nodes, self.live_nodes = fixed, live
        if len(fixed) and base is None:
            raise ValueError("nodes below the first layer need the plain run's outputs")
        self.fixed = (_select(base.float(), fixed) - _select(source, fixed)).to(device).transpose(0, 1).contiguous() \
            if len(fixed) and base is not None else torch.zeros(0, batch, pos, d, device=device)
        self.live = torch.zeros(self.masks, len(live), batch, pos, d, device=device)
        #: sums of every recorded difference (fixed: all of them, shared by the masks; live: so far, per mask)
        self.fixed_sum = self.fixed.sum(0)
        self.live_sum = torch.zeros(self.masks, batch, pos, d, device=device)
        self.recorded = 0  # live slots filled so far (records come in node order)
        self._slot = torch.full((int(mask.shape[-1]),), -1, dtype=torch.long)
        self._slot[live] = torch.arange(len(live))

    @property
    def empty(self) -> bool:
        return len(self.nodes) == 0

    def record(self, first_node: int, outputs: torch.Tensor) -> None:
        """This forward's outputs of nodes ``first_node ..`` (``[rows, pos, n, d]``, or ``[rows, pos, d]`` for one)."""
        if outputs.dim() == 3:
            outputs = outputs[:, :, None]
        n = outputs.shape[2]
        slots = self._slot[first_node:first_node + n]
        keep = (slots >= 0).nonzero().squeeze(1)
        if not len(keep):
            return
        node = keep + first_node
        current = outputs[:, :, keep.to(outputs.device)].float().transpose(1, 2)  # [rows, k, pos, d]
        current = current.reshape(self.masks, self.batch, *current.shape[1:]) - _select(self.source, node)[None]
        self.live[:, slots[keep].to(self.live.device)] = current.transpose(1, 2)
        self.live_sum += current.sum(2)
        self.recorded = max(self.recorded, int(slots[keep].max()) + 1)

    def _part(self, weights: torch.Tensor, values: torch.Tensor, total: Callable[[], torch.Tensor],
              shared: bool) -> torch.Tensor:
        """``[m, t, b*pos*d]``: ``sum_k weights[m, t, k] * values[k]`` with ``values`` ``[k, ...]`` (``shared``: one
        for every mask) or ``[m, k, ...]``; ``total()`` is ``sum_k values[k]``, computed only for the complement
        form."""
        m, t, k = weights.shape
        dropped, kept = weights.any(1).any(0), (~weights).any(1).any(0)  # per node: some target drops / keeps it
        use_complement = self.complement if self.complement is not None else int(kept.sum()) < int(dropped.sum())
        needed = kept if use_complement else dropped
        w = (~weights if use_complement else weights).float()
        if 2 * int(needed.sum()) > k:  # most of them: multiply by zero rather than copy the rest out (a gather)
            which: torch.Tensor | slice = slice(None)
            n = k
        else:
            which = needed.nonzero().squeeze(1)
            n = len(which)
            w = w[:, :, which]
        if not n:
            size = values[0, 0].numel() if not shared else values[0].numel()
            part = values.new_zeros(m, t, size)
        elif shared:
            part = (w.reshape(m * t, -1) @ values[which].reshape(n, -1)).view(m, t, -1)
        else:
            part = torch.bmm(w, values[:, which].reshape(m, n, -1))
        if not use_complement:
            return part
        whole = total()
        return whole.reshape(whole.shape[0] if not shared else 1, 1, -1) - part

    def _total(self, k: int, shared: bool) -> Callable[[], torch.Tensor]:
        """``sum`` of the first ``k`` differences of one part, for the complement form (built only when used)."""
        if shared:  # all fixed nodes feed targets this forward computes; a shorter prefix sums its own
            return lambda: self.fixed_sum if k == len(self.fixed_nodes) else self.fixed[:k].sum(0)
        # the running sum may hold later nodes (a parallel block's heads before its MLP): take them out
        return lambda: self.live_sum - self.live[:, k:self.recorded].sum(1) if self.recorded > k else self.live_sum

    def correction(self, dropped: torch.Tensor) -> torch.Tensor:
        """``C [masks, batch, n_t, pos, d] = sum_u dropped[m, t, u] * delta_u`` for ``dropped [masks, n_t, U_up]``."""
        up = dropped.shape[-1]
        m, t = dropped.shape[:2]
        b, pos, d = self.batch, self.live.shape[-2], self.live.shape[-1]
        out = self.live.new_zeros(m, t, b * pos * d)
        for nodes, values, shared in ((self.fixed_nodes, self.fixed, True), (self.live_nodes, self.live, False)):
            k = int((nodes < up).sum())  # nodes ascend: those feeding these targets are a prefix
            if not k:
                continue
            weights = dropped[:, :, nodes[:k].to(dropped.device)]  # [m, t, k] bool
            out += self._part(weights, values[:k] if shared else values[:, :k], self._total(k, shared), shared)
        return out.view(m, t, b, pos, d).transpose(1, 2)
