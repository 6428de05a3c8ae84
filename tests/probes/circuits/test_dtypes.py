"""Edge-level circuits in float32 and bfloat16 (and float16 on the tiny models), tolerances from the dtype.

Every edge kept is the plain run bit for bit in every dtype; no edge kept is the corrupt run within the dtype's
rounding; exact edge patching equals a full forward per edge; EAP and EAP-IG give finite float32 scores; the
faithfulness of the full circuit is 1. Tiny models of four kinds of layer, and both real models in bfloat16.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_tiny
from toys import edge_pairs, gap_metric

from lmscope.interventions import HookedModel
from lmscope.interventions.tolerance import assert_close
from lmscope.probes.circuits import (
    EdgeGraph,
    EdgePatch,
    edge_attribution,
    evaluate_circuit,
    ioi_pairs,
    node_outputs,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ARCHS = ["llama", "gpt2", "gpt_neox", "gemma3_text"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_edge_methods_in_every_dtype(arch: str, dtype: str, one_thread: None) -> None:
    model = HookedModel(build_tiny(arch).to(DTYPES[dtype]))
    graph = EdgeGraph.from_model(model)
    clean, corrupt = edge_pairs()
    source, _ = node_outputs(model, corrupt, graph=graph)
    assert source.dtype == torch.float32
    plain = model.run(clean).logits
    assert torch.equal(model.run(clean, [EdgePatch(graph.mask(keep=False), source)]).logits, plain)
    corrupt_logits = model.run(corrupt).logits
    dropped = model.run(clean, [EdgePatch(graph.mask(), source)]).logits
    assert_close(dropped.float(), corrupt_logits.float(), DTYPES[dtype], n_ops=32,
                 scale=float(corrupt_logits.abs().max()))
    edges = graph.edge_index[::23]
    exact = edge_attribution(model, clean, corrupt, gap_metric, method="exact", edges=edges, batch_size=8)
    base = gap_metric(plain[:, -1].float())
    for t, u in edges[:4].tolist():
        mask = torch.ones(graph.n_targets, graph.n_nodes, dtype=torch.bool)
        mask[t, u] = False
        want = gap_metric(model.run(clean, [EdgePatch(mask, source)]).logits[:, -1].float()) - base
        assert_close(exact.per_pair[:, t, u], want, DTYPES[dtype], n_ops=16, scale=float(base.abs().max()))
    for method in ("eap", "eap-ig"):
        scores = edge_attribution(model, clean, corrupt, gap_metric, method=method, ig_steps=2)
        assert scores.per_pair.dtype == torch.float32 and torch.isfinite(scores.edge_values()).all()
    full = evaluate_circuit(model, clean, corrupt, gap_metric, graph.mask(keep=False))
    assert full.faithfulness == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["smollm_bf16", "gemma3_bf16"])
def test_real_models_in_bfloat16(which: str, request: pytest.FixtureRequest) -> None:
    model: HookedModel = request.getfixturevalue(which)
    task = ioi_pairs(model, 2)
    graph = EdgeGraph.from_model(model)
    source, _ = node_outputs(model, task.corrupt, graph=graph)
    plain = model.run(task.clean).logits
    assert torch.equal(model.run(task.clean, [EdgePatch(graph.mask(keep=False), source)]).logits, plain)
    corrupt = model.run(task.corrupt).logits
    dropped = model.run(task.clean, [EdgePatch(graph.mask(), source)]).logits
    assert_close(dropped.float(), corrupt.float(), torch.bfloat16, n_ops=64, scale=float(corrupt.abs().max()))
    scores = edge_attribution(model, task.clean, task.corrupt, task.metrics, method="eap-ig", ig_steps=2)
    top = graph.edge_index[scores.edge_values("abs").nan_to_num(-1).argsort(descending=True)[:6]]
    exact = edge_attribution(model, task.clean, task.corrupt, task.metrics, method="exact", edges=top)
    assert torch.isfinite(exact.edge_values()[exact.scored()]).all()
    assert float(torch.corrcoef(torch.stack([scores.edge_values()[exact.scored()],
                                             exact.edge_values()[exact.scored()]]))[0, 1]) > 0
