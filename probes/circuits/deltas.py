"""The node differences an edge-level forward needs, stored once per prompt where they cannot vary by mask.

A dropped edge ``u -> t`` moves target ``t``'s input by ``-(out_u - source_u)``, where ``out_u`` is node ``u``'s
output *in this forward* (row). :class:`Deltas` keeps that difference only for the nodes some mask drops, in two
parts:

- nodes below the forward's first layer (a partial forward that starts at layer ``L``): their outputs are the
  plain run's (``base``) in every row, so the difference is stored once per prompt ``[batch, k, pos, d]`` and
  shared by every mask;
- nodes computed in this forward: per row ``[masks, batch, k, pos, d]``, filled as the forward produces them.

Rows are mask-major (row ``m * batch + b``). A correction for a group of targets that share one upstream prefix
is one einsum of the dropped-edge indicator with each part, so a batch of single-edge masks (exact edge
patching) costs the einsum over the few nodes they drop, not over every node of every row.
"""

from __future__ import annotations

import torch


def _select(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values [b, U, pos, d]`` (or a broadcast ``[1, U, 1, d]``) at node ``index``, as ``[b, k, pos, d]``."""
    return values[:, index.to(values.device)]


class Deltas:
    """``out_u - source_u`` for the nodes dropped by any of ``mask`` ``[masks, T, U]`` (see the module docstring).

    ``source``: ``[batch, U, pos, d]`` or a broadcast view ``[1, U, 1, d]``; ``base``: the plain run's node
    outputs ``[batch, U, pos, d]`` for the nodes below ``first`` (the first node this forward computes)."""

    def __init__(self, mask: torch.Tensor, source: torch.Tensor, base: torch.Tensor | None, first: int,
                 batch: int, pos: int, d: int, device: torch.device) -> None:
        self.masks, self.batch = mask.shape[0], batch
        dropped = (~mask).any(1).any(0).cpu()  # [U]
        self.nodes = dropped.nonzero().squeeze(1)  # the nodes any mask drops, ascending
        self.source = source
        fixed, live = self.nodes[self.nodes < first], self.nodes[self.nodes >= first]
        self.fixed_nodes, self.live_nodes = fixed, live
        if len(fixed) and base is None:
            raise ValueError("nodes below the first layer need the plain run's outputs")
        self.fixed = (_select(base.float(), fixed) - _select(source, fixed)).to(device) if len(fixed) and \
            base is not None else torch.zeros(batch, 0, pos, d, device=device)
        self.live = torch.zeros(self.masks, batch, len(live), pos, d, device=device)
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
        current = current.reshape(self.masks, self.batch, *current.shape[1:])
        self.live[:, :, slots[keep].to(self.live.device)] = current - _select(self.source, node)[None]

    def correction(self, dropped: torch.Tensor) -> torch.Tensor:
        """``C [masks, batch, n_t, pos, d] = sum_u dropped[m, t, u] * delta_u`` for ``dropped [masks, n_t, U_up]``."""
        up = dropped.shape[-1]
        out = None
        for nodes, values, pattern in ((self.fixed_nodes, self.fixed, "mtk,bkpd->mbtpd"),
                                       (self.live_nodes, self.live, "mtk,mbkpd->mbtpd")):
            inside = nodes < up
            if not bool(inside.any()):
                continue
            k = int(inside.sum())
            part = torch.einsum(pattern, dropped[:, :, nodes[:k].to(dropped.device)].float(), values[..., :k, :, :])
            out = part if out is None else out + part
        if out is None:
            m, t = dropped.shape[:2]
            pos, d = self.live.shape[-2:]
            return self.live.new_zeros(m, self.batch, t, pos, d)
        return out
