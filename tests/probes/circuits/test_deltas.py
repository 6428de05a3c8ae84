"""The node differences behind every correction: both forms (dropped nodes, or the running sum minus the kept
ones) give the same sum as the definition, with masks sparse and dense, fixed (skipped-layer) and live nodes."""

from __future__ import annotations

import pytest
import torch

from lmscope.interventions.tolerance import assert_close
from lmscope.probes.circuits.deltas import Deltas


@pytest.mark.parametrize("kept", [0.02, 0.5, 0.98])
@pytest.mark.parametrize("complement", [None, True, False])
def test_both_forms_equal_the_definition(kept: float, complement: bool | None) -> None:
    gen = torch.Generator().manual_seed(0)
    masks, targets, nodes, batch, pos, d, first = 3, 5, 12, 2, 4, 6, 4
    mask = torch.rand(masks, targets, nodes, generator=gen) < kept
    source = torch.randn(batch, nodes, pos, d, generator=gen)
    base = torch.randn(batch, nodes, pos, d, generator=gen)
    deltas = Deltas(mask, source, base, first, batch, pos, d, torch.device("cpu"), complement=complement)
    outputs = torch.randn(masks * batch, pos, nodes, d, generator=gen)
    deltas.record(first, outputs[:, :, first:9])  # nodes 4..8 so far
    # the definition: delta_u = (this forward's output or, below `first`, the plain run's) - source
    current = outputs.view(masks, batch, pos, nodes, d).permute(0, 1, 3, 2, 4)  # [m, b, U, pos, d]
    delta = torch.cat([(base - source)[None, :, :first].expand(masks, -1, -1, -1, -1),
                       current[:, :, first:] - source[None, :, first:]], dim=2)
    for up in (3, 7, 9):  # prefixes below, inside and at the end of what was recorded
        dropped = ~mask[:, :, :up]
        want = torch.einsum("mtu,mbupd->mbtpd", dropped.float(), delta[:, :, :up])
        assert_close(deltas.correction(dropped), want, n_ops=16, scale=float(delta.abs().max()) * nodes)


def test_running_sum_leaves_out_nodes_after_the_prefix() -> None:
    """A parallel block records its heads before its MLP reads a prefix that excludes them."""
    gen = torch.Generator().manual_seed(1)
    mask = torch.zeros(1, 2, 6, dtype=torch.bool)
    mask[0, :, 1] = True  # keep one node: the complement form is chosen
    source = torch.zeros(1, 6, 2, 3)
    deltas = Deltas(mask, source, None, 0, 1, 2, 3, torch.device("cpu"))
    outputs = torch.randn(1, 2, 6, 3, generator=gen)
    deltas.record(0, outputs)
    got = deltas.correction(~mask[:, :, :4])
    want = outputs[0].permute(1, 0, 2)[[0, 2, 3]].sum(0)  # nodes 0, 2, 3 dropped; 4 and 5 are later
    assert_close(got[0, 0, 0], want, n_ops=8)
