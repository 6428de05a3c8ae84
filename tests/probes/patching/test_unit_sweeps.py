"""Sweeps over every site kind ``Cache`` reads, per head of every per-head kind and per MLP neuron (issue 29).

The exact batched engine (partial forwards, ``RowWrite``) must equal the one-forward-per-cell loop built on the
core ``Patch`` (``Edit`` for attention-map rows, which ``Patch`` does not write) on every architecture; neuron
attribution must equal the first-order term computed by hand.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import WINDOW, build_tiny, random_ids
from toys import gap_metric, patching_pair

from lmscope.interventions import Cache, HookedModel, InputError
from lmscope.interventions.heads import HEAD_AXES
from lmscope.interventions.sites import LAYER_SITES, MODEL_SITES
from lmscope.probes.patching import head_sweep, neuron_sweep, patching_sweep
from lmscope.probes.patching.pairs import UNPATCHABLE

NEURON_KINDS = ("mlp_pre", "mlp_post")


metric, _pair = gap_metric, patching_pair


def _sites(model: HookedModel, kinds) -> list[str]:  # type: ignore[no-untyped-def]
    return [k if k in MODEL_SITES else f"{k}.1" for k in kinds if k in model.available_kinds]


def _exact_equals_loop(model: HookedModel, clean, corrupt, sites, positions, **kw) -> None:  # type: ignore[no-untyped-def]
    fast = patching_sweep(model, clean, corrupt, sites, positions, metric, layer_block=2, position_block=2,
                          batch_size=5, **kw)
    slow = patching_sweep(model, clean, corrupt, sites, positions, metric, method="loop", **kw)
    assert fast.row_labels == slow.row_labels
    torch.testing.assert_close(fast.values, slow.values, atol=2e-5, rtol=1e-5)
    moved = {label for label, row in zip(fast.row_labels, fast.effect()) if row.abs().max() > 1e-6}
    assert len(moved) >= len(fast.row_labels) // 2, moved  # the patches really change the metric


def test_every_kind_cache_reads_is_patchable_but_the_logits() -> None:
    from lmscope.probes.patching.pairs import _PATCHABLE

    assert set(_PATCHABLE) == (set(LAYER_SITES) | set(MODEL_SITES)) - {"logits"} and set(UNPATCHABLE) == {"logits"}


def test_exact_sweep_equals_loop_on_every_kind_head_and_neuron(tiny: HookedModel) -> None:
    clean = random_ids((WINDOW - 1,), 5)  # shorter than the sliding windows: the fast path runs there too
    corrupt = clean.clone()
    corrupt[1] = (corrupt[1] + 5) % 97
    kinds = [k for k in ("embed", *LAYER_SITES, "final_norm") if k != "resid_pre"]  # resid_pre: test_sweep.py
    _exact_equals_loop(tiny, clean, corrupt, _sites(tiny, kinds), [0, 1, -1])
    heads = _sites(tiny, HEAD_AXES)
    if heads:
        _exact_equals_loop(tiny, clean, corrupt, heads, [1, -1], heads=True)
    neurons = _sites(tiny, NEURON_KINDS)
    if neurons:
        _exact_equals_loop(tiny, clean, corrupt, neurons, "all", neurons=[0, 7, -1])


def test_dataset_sweeps_of_kv_heads_maps_and_neurons_equal_the_loop(llama_tiny: HookedModel) -> None:
    pairs = [_pair(5, seed) for seed in (2, 3, 4)]
    clean, corrupt = [c.tolist() for c, _ in pairs], [k.tolist() for _, k in pairs]
    for sites, kw in ((["v.*", "attn_pattern.1"], {"heads": [1, 0]}), ("mlp_post.*", {"neurons": [4, 2]})):
        fast = patching_sweep(llama_tiny, clean, corrupt, sites, [2, -1], metric, batch_size=8, **kw)
        slow = patching_sweep(llama_tiny, clean, corrupt, sites, [2, -1], metric, method="loop", **kw)
        torch.testing.assert_close(fast.per_pair, slow.per_pair, atol=2e-5, rtol=1e-5)
        assert fast.per_pair.std(0).max() > 1e-5  # the pairs really differ


def test_neuron_sweep_rows_labels_and_top(llama_tiny: HookedModel) -> None:
    clean, corrupt = _pair()
    r = neuron_sweep(llama_tiny, clean, corrupt, metric, layers=[1, 2], neurons=[3, 0, -1])
    assert r.row_labels == [f"mlp_post.{layer}:n{n}" for layer in (1, 2) for n in (3, 0, 47)]
    assert r.col_labels == ["all"]
    same = patching_sweep(llama_tiny, clean, corrupt, ["mlp_post.1", "mlp_post.2"], "all", metric, neurons=[3, 0, 47])
    assert torch.equal(r.values, same.values)
    top = r.top(1)[0]
    assert top.site in r.row_labels and top.neuron == int(top.site.split(":n")[1]) and top.head is None
    every = neuron_sweep(llama_tiny, clean, corrupt, metric, layers=[0], kind="mlp_pre", positions=[-1])
    assert every.row_labels == [f"mlp_pre.0:n{n}" for n in range(llama_tiny.d_mlp)]


def test_neuron_attribution_equals_the_first_order_term_by_hand(llama_tiny: HookedModel) -> None:
    clean, corrupt = _pair()
    neurons = [1, 9, 30]
    est = neuron_sweep(llama_tiny, clean, corrupt, metric, layers=[1], neurons=neurons, positions=[1, 3, -1],
                       method="attribution")
    src = llama_tiny.run(clean, [Cache("mlp_post.1")]).cache["mlp_post.1"][0]
    cache = Cache("mlp_post.1", detach=False)
    base_run = llama_tiny.run(corrupt, [cache], grad=True)
    base_value = cache["mlp_post.1"]
    m = metric(base_run.last_logits())
    (grad,) = torch.autograd.grad(m.sum(), [base_value])
    m = m.detach()
    delta = (src - base_value[0]).detach()
    for r, n in enumerate(neurons):
        for k, p in enumerate((1, 3, 5)):
            expected = float(m) + float(delta[p, n] * grad[0, p, n])
            assert float(est.values[r, k]) == pytest.approx(expected, abs=1e-5)
    # relative_delta of a neuron: its change through its row of the MLP output matrix, over the residual stream
    w_out, _ = llama_tiny.mlp_output_projection(1)
    stream = llama_tiny.run(corrupt, [Cache("resid_pre.1")]).cache["resid_pre.1"][0]
    rel = float((delta[3, 9] * w_out[9].detach()).norm() / stream[3].norm())
    assert float(est.extras["relative_delta"][1, 1]) == pytest.approx(rel, rel=1e-4)


def test_attribution_without_a_difference_on_every_kind(llama_tiny: HookedModel) -> None:
    clean, _ = _pair()
    kinds = ("embed", *LAYER_SITES, "final_norm")
    for method in ("attribution", "atp*"):
        for kw, sites in (({}, _sites(llama_tiny, kinds)), ({"heads": True}, _sites(llama_tiny, HEAD_AXES)),
                          ({"neurons": [0, 5]}, _sites(llama_tiny, NEURON_KINDS))):
            same = patching_sweep(llama_tiny, clean, clean, sites, [0, -1], metric, method=method, **kw)
            torch.testing.assert_close(same.values, torch.full_like(same.values, same.base_metric), atol=1e-5,
                                       rtol=0)
            assert float(same.extras["relative_delta"].max()) < 1e-6  # (the base run has grad on: rounding)


def test_head_sweeps_of_other_kinds_and_the_kv_note(llama_tiny: HookedModel) -> None:
    clean, corrupt = _pair()
    v = head_sweep(llama_tiny, clean, corrupt, metric, kind="v")
    assert v.row_labels == [f"v.{layer}:h{g}" for layer in range(3) for g in range(2)]
    assert v.by_head().shape == (3, llama_tiny.n_kv_heads)
    assert any("KV heads" in n and "':h1' touched query heads 2, 3" in n for n in v.notes)
    q = head_sweep(llama_tiny, clean, corrupt, metric, kind="q", method="attribution")
    assert q.by_head().shape == (3, 4) and not any("KV heads" in n for n in q.notes)
    pattern = head_sweep(llama_tiny, clean, corrupt, metric, layers=[1], kind="attn_pattern", positions=None)
    assert pattern.by_head(positions=True).shape == (1, 4, 6)  # per head and query row, as TL's pattern by dest
    with pytest.raises(InputError, match=r"by_head\(\) is \[layers, heads\], but this map has 6 position"):
        pattern.by_head()
    plain = HookedModel(build_tiny("llama_tied"))  # no grouped-query attention: KV head = query head
    assert not any("KV heads" in n for n in head_sweep(plain, clean, corrupt, metric, kind="k").notes)


def test_patching_scores_equals_patching_the_pattern_they_give(llama_tiny: HookedModel) -> None:
    """The same query rows of attn_scores and attn_pattern, patched per head: softmax makes them one patch."""
    clean, corrupt = _pair()
    scores = patching_sweep(llama_tiny, clean, corrupt, "attn_scores.*", [2, -1], metric, heads=True)
    pattern = patching_sweep(llama_tiny, clean, corrupt, "attn_pattern.*", [2, -1], metric, heads=True)
    torch.testing.assert_close(scores.values, pattern.values, atol=1e-5, rtol=1e-5)
    assert scores.effect().abs().max() > 1e-4
