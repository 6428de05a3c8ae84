"""Faithfulness of circuits: the full circuit is the clean run (1), the empty one the corrupt run (0), on every
tiny architecture; batched masks equal one circuit at a time; the curve's random circuits follow the seed, its
circuits share as few forwards as batch_size allows, and its figure is a PNG; bad inputs are named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import VOCAB, random_ids

from lmscope.interventions import HookedModel, InputError
from lmscope.interventions.tolerance import assert_close
from lmscope.probes.circuits import (
    Circuit,
    EdgeGraph,
    edge_attribution,
    evaluate_circuit,
    evaluate_circuits,
    faithfulness_curve,
)
from lmscope.probes.circuits import faithfulness as faithfulness_module


def logit_gap(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, 3] - logits[:, 8]


def contrast() -> tuple[torch.Tensor, torch.Tensor]:
    """Three 6-token pairs whose corrupt prompt shifts tokens 1 and 3 of the clean one."""
    clean = random_ids((3, 6), 10)
    shift = torch.zeros(6, dtype=torch.long).index_fill(0, torch.tensor([1, 3]), 11).to(clean.device)
    return clean, (clean + shift - 1) % (VOCAB - 1) + 1  # ids stay in [1, VOCAB), like random_ids


def test_the_full_circuit_keeps_everything_and_the_empty_one_nothing(tiny: HookedModel) -> None:
    graph = EdgeGraph.from_model(tiny)
    clean, corrupt = contrast()
    full = Circuit(graph, graph.valid.clone())
    empty = Circuit(graph, torch.zeros_like(graph.valid))
    f_full, f_empty = evaluate_circuits(tiny, clean, corrupt, logit_gap, [full, empty])
    scale = float(torch.cat([f_full.clean_metric, f_full.corrupt_metric]).abs().max())
    assert abs(f_full.gap) > 1e-3 * scale  # the corruption changes the metric: the identities mean something
    assert_close(f_full.circuit_metric, f_full.clean_metric, n_ops=8, scale=scale)
    assert_close(f_empty.circuit_metric, f_empty.corrupt_metric, n_ops=16, scale=scale)
    assert_close(f_full.faithfulness, 1.0, n_ops=8, scale=scale / abs(f_full.gap), msg="full circuit")
    assert_close(f_empty.faithfulness, 0.0, n_ops=16, scale=scale / abs(f_full.gap), msg="empty circuit")
    assert f_full.n_edges == graph.n_edges and f_empty.n_edges == 0


def test_a_mean_source_measures_against_every_edge_mean_ablated(llama_tiny: HookedModel) -> None:
    graph = EdgeGraph.from_model(llama_tiny)
    clean, corrupt = contrast()
    full, empty = evaluate_circuits(llama_tiny, clean, corrupt, logit_gap,
                                    torch.stack([graph.valid, torch.zeros_like(graph.valid)]), source="mean")
    assert empty.faithfulness == 0.0  # the base is the same mask in the same forward
    assert torch.equal(full.circuit_metric, full.clean_metric)  # every edge kept: no target is touched
    assert full.faithfulness == pytest.approx(1.0, abs=1e-12) and full.source == "mean"


def _scores(model: HookedModel) -> Any:
    clean, corrupt = contrast()
    return edge_attribution(model, clean, corrupt, logit_gap, method="eap")


def test_batched_circuits_equal_one_circuit_at_a_time(llama_tiny: HookedModel) -> None:
    clean, corrupt = contrast()
    scores = _scores(llama_tiny)
    circuits = [scores.circuit(k=5), scores.circuit(k=30, prune=False), Circuit.random(scores.graph, 40, seed=1)]
    together = evaluate_circuits(llama_tiny, clean, corrupt, logit_gap, circuits, batch_size=16)
    for circuit, got in zip(circuits, together):
        alone = evaluate_circuit(llama_tiny, clean, corrupt, logit_gap, circuit, batch_size=1)  # pairs split too
        assert_close(got.circuit_metric, alone.circuit_metric, n_ops=8)
        assert got.n_edges == circuit.n_edges
        a = got.circuit_metric.double() - got.corrupt_metric.double()
        assert got.faithfulness == pytest.approx(float(a.mean()) / got.gap)  # the ratio of means
    assert len({round(f.faithfulness, 6) for f in together}) == 3  # three different circuits, three values
    d = json.loads(json.dumps(together[0].to_dict()))
    assert d["n_edges"] == circuits[0].n_edges and len(d["per_pair"]) == 3


def test_pruning_does_not_change_what_a_circuit_computes_from_the_corrupt_source(tiny: HookedModel) -> None:
    """The edges pruning drops carry the corrupt value either way (module docstring of pruning): the metric is
    the same, which is why the curve's random circuits need no pruning."""
    if tiny.arch.attn_post_norm is not None:
        pytest.skip("post-attention norms couple a layer's heads: the stated exception")
    graph = EdgeGraph.from_model(tiny)
    clean, corrupt = contrast()
    raw = [Circuit.random(graph, n, seed=(0, n)) for n in (graph.n_edges // 8, graph.n_edges // 3)]
    pruned = [c.pruned() for c in raw]
    assert all(p.n_edges < r.n_edges for p, r in zip(pruned, raw))  # pruning really drops edges
    results = evaluate_circuits(tiny, clean, corrupt, logit_gap, raw + pruned)
    scale = float(torch.cat([results[0].clean_metric, results[0].corrupt_metric]).abs().max())
    for a, b in zip(results[:2], results[2:]):
        assert_close(a.circuit_metric, b.circuit_metric, n_ops=16, scale=scale)


def test_the_curve_batches_its_circuits_and_follows_its_seed(llama_tiny: HookedModel, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    clean, corrupt = contrast()
    scores = _scores(llama_tiny)
    forwards: list[int] = []
    real = faithfulness_module.run_pairs

    def counting(model: HookedModel, batch: Any, interventions: list[Any], grad: bool = False) -> torch.Tensor:
        forwards.append(int(batch.input_ids.shape[0]))
        return real(model, batch, interventions, grad)

    monkeypatch.setattr(faithfulness_module, "run_pairs", counting)
    n_all = int(scores.scored().sum())
    curve = faithfulness_curve(llama_tiny, clean, corrupt, logit_gap, scores, [3, 10, 40, n_all], n_random=2,
                               batch_size=12)
    assert forwards == [12, 12, 12]  # 12 circuits x 3 pairs, 4 circuits per forward of at most 12 rows
    for circuit, row in zip(curve.circuits, curve.random_circuits):
        assert all(r.n_edges == circuit.n_edges for r in row)
    assert curve.n_edges[-1] == scores.graph.n_edges and curve.top[-1].faithfulness == pytest.approx(1.0, abs=1e-4)
    assert curve.smallest is not None and curve.top[curve.sizes.index(curve.smallest)].faithfulness >= 0.8
    again = faithfulness_curve(llama_tiny, clean, corrupt, logit_gap, scores, [3, 10], n_random=2, batch_size=12)
    other = faithfulness_curve(llama_tiny, clean, corrupt, logit_gap, scores, [3, 10], n_random=2, seed=1)
    for i in range(2):
        for r in range(2):
            assert torch.equal(again.random_circuits[i][r].in_circuit, curve.random_circuits[i][r].in_circuit)
            assert again.random[i][r].faithfulness == pytest.approx(curve.random[i][r].faithfulness, abs=1e-6)
    assert any(not torch.equal(other.random_circuits[i][r].in_circuit, curve.random_circuits[i][r].in_circuit)
               for i in range(2) for r in range(2))
    curve.plot(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = json.loads(json.dumps(curve.to_dict()))
    assert [row["k"] for row in d["sizes"]] == [3, 10, 40, n_all] and d["smallest"] == curve.smallest


def test_a_curve_that_never_reaches_the_threshold_reports_its_best(llama_tiny: HookedModel, tmp_path: Path) -> None:
    clean, corrupt = contrast()
    scores = _scores(llama_tiny)
    curve = faithfulness_curve(llama_tiny, clean, corrupt, logit_gap, scores, [1, 2], n_random=0, threshold=1.0)
    if any(f.faithfulness >= 1.0 for f in curve.top):
        pytest.skip("a 1- or 2-edge circuit recovered the whole gap on this random model")
    k, value = curve.best
    assert curve.smallest is None and value == max(f.faithfulness for f in curve.top)
    assert curve.summary() == f"no size keeps 100% of the gap; the best is top-{k} with {value:.1%}"
    assert curve.random_faithfulness.shape == (2, 0)
    curve.plot(tmp_path / "curve.svg")  # no random series to draw
    assert b"<svg" in (tmp_path / "curve.svg").read_bytes()[:2000]


def test_bad_inputs_are_named(llama_tiny: HookedModel) -> None:
    clean, corrupt = contrast()
    scores = _scores(llama_tiny)
    graph = scores.graph
    run = lambda circuit, **kw: evaluate_circuit(llama_tiny, clean, corrupt, logit_gap, circuit, **kw)  # noqa: E731
    with pytest.raises(InputError, match="use evaluate_circuits for a batch"):
        run(torch.stack([graph.valid, graph.valid]))
    with pytest.raises(InputError, match="The circuit was built for"):
        run(Circuit(EdgeGraph(2, 4, 2, False), torch.zeros(19, 11, dtype=torch.bool)))
    with pytest.raises(InputError, match="Give a Circuit or a bool edge mask"):
        run("A0.1->M1")
    with pytest.raises(InputError, match="batch_size must be an int >= 1"):
        run(graph.valid, batch_size=0)
    with pytest.raises(InputError, match="source must be 'corrupt', 'mean'"):
        run(graph.valid, source="zero")
    with pytest.raises(InputError, match="same mean metric"):
        evaluate_circuit(llama_tiny, clean, clean, logit_gap, graph.valid)
    curve = lambda *sizes, **kw: faithfulness_curve(llama_tiny, clean, corrupt, logit_gap, scores,  # noqa: E731
                                                    list(sizes), **kw)
    with pytest.raises(InputError, match="each size must be an int >= 1"):
        curve(0, 5)
    with pytest.raises(InputError, match=f"only {graph.n_edges} edges have a score"):
        curve(graph.n_edges + 1)
    with pytest.raises(InputError, match="n_random must be an int >= 0"):
        curve(3, n_random=-1)
    with pytest.raises(InputError, match=r"threshold must be a fraction in \(0, 1\]"):
        curve(3, threshold=80)
