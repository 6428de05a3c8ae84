"""Attribution patching: the estimate is (source - base) · ∂metric/∂site, computed by hand independently."""

from __future__ import annotations

import pytest
import torch
from tiny_models import random_ids

from lmscope.interventions import Cache
from lmscope.interventions.partial import run_from_layer
from lmscope.probes.patching import LARGE_CHANGE, LARGE_DELTA, head_sweep, patching_sweep


def metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, 5] - logits[:, 7]


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    clean = random_ids((6,), 3)
    corrupt = clean.clone()
    corrupt[2] = (corrupt[2] + 9) % 97
    return clean, corrupt


def test_estimate_equals_first_order_term_computed_by_hand(tiny) -> None:
    from lmscope.interventions.partial import partial_forward_unsupported

    if partial_forward_unsupported(tiny):  # the by-hand reference below uses run_from_layer
        pytest.skip(f"the by-hand reference needs partial forwards ({partial_forward_unsupported(tiny)})")
    clean, corrupt = _pair()
    result = patching_sweep(tiny, clean, corrupt, ["resid_pre.1", "resid_pre.2"], None, metric,
                            method="attribution")
    src = tiny.run(clean, [Cache("resid_pre.*")]).cache
    base = tiny.run(corrupt, [Cache("resid_pre.*")]).cache
    for r, layer in enumerate((1, 2)):
        hidden = base[f"resid_pre.{layer}"].clone().requires_grad_(True)
        m = metric(run_from_layer(tiny, hidden, layer, corrupt[None], grad=True))
        (grad,) = torch.autograd.grad(m.sum(), [hidden])
        delta = src[f"resid_pre.{layer}"] - base[f"resid_pre.{layer}"]
        expected = float(m.detach()) + (delta * grad).sum(-1)[0]
        torch.testing.assert_close(result.values[r], expected, atol=1e-5, rtol=1e-5, check_device=False)
        rel = delta.norm(dim=-1)[0] / base[f"resid_pre.{layer}"].norm(dim=-1)[0]
        torch.testing.assert_close(result.extras["relative_delta"][r], rel, atol=1e-5, rtol=1e-5,
                                   check_device=False)
    assert result.method == "attribution" and any("AtP*" in n for n in result.notes)


def test_no_difference_means_no_estimated_effect_and_heads_work(llama_tiny) -> None:
    clean, corrupt = _pair()
    same = patching_sweep(llama_tiny, clean, clean, "attn_out.*", None, metric, method="attribution")
    torch.testing.assert_close(same.values, torch.full_like(same.values, same.base_metric))
    heads = head_sweep(llama_tiny, clean, corrupt, metric, method="attribution")
    exact = head_sweep(llama_tiny, clean, corrupt, metric)
    assert heads.row_labels == exact.row_labels and heads.extras["relative_delta"].shape == exact.values.shape
    assert heads.source_metric == exact.source_metric


def test_large_patches_are_counted_in_the_notes(llama_tiny) -> None:
    clean = random_ids((5,), 4)
    corrupt = (clean + 13) % 97  # every token differs: embeddings differ by about their own norm
    result = patching_sweep(llama_tiny, clean, corrupt, "resid_pre.0", None, metric, method="attribution")
    large = int((result.extras["relative_delta"] > LARGE_DELTA).sum())
    assert large > 0 and any(f"{large} of 5 cells" in n for n in result.notes)


def _linear_after_pattern(model) -> None:
    """Make everything downstream of layer 2's attention pattern linear in resid_pre.2 (norms off, MLP off)."""
    hf = model.hf_model
    layer = hf.model.layers[2]
    layer.input_layernorm = torch.nn.Identity()
    hf.model.norm = torch.nn.Identity()
    with torch.no_grad():
        layer.mlp.down_proj.weight.zero_()
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):  # sharp attention: a non-linear softmax
            proj.weight.mul_(30.0)


def test_atp_star_is_exact_when_the_rest_is_linear_in_the_pattern(llama_tiny, monkeypatch) -> None:
    """resid_pre.2 patches in the null space of W_V, with layer 2's norm and MLP and the final norm removed:
    the metric is then linear in the pattern of layer 2 and in the residual, so AtP* = exact patching;
    plain AtP (softmax linearised) is not."""
    import lmscope.probes.patching.attribution as attribution
    import lmscope.probes.patching.pairs as pairs
    import lmscope.probes.patching.sweep as sweep

    model = llama_tiny
    _linear_after_pattern(model)
    clean, corrupt = _pair()
    w_v = model.hf_model.model.layers[2].self_attn.v_proj.weight.detach().cpu()  # [kv * d_head, d_model]
    null = torch.eye(w_v.shape[1]) - torch.linalg.pinv(w_v) @ w_v  # projector on null(W_V), built on the CPU
    base = model.run(corrupt, [Cache("resid_pre.2")]).cache["resid_pre.2"][0]
    gen = torch.Generator().manual_seed(0)
    delta_cpu = 10.0 * torch.randn(base.shape, generator=gen) @ null
    assert float((delta_cpu @ w_v.T).abs().max()) < 1e-4 and float(delta_cpu.norm()) > 1.0
    delta = delta_cpu.to(base.device)
    real = pairs.source_values

    def crafted(model, pair, sites):
        _, logits = real(model, pair, sites)
        return {s: (base + delta)[None] for s in sites}, logits  # [pairs=1, T, d_model]

    for user in (sweep, attribution):  # the exact/loop sweep and attribution patching each run the source
        monkeypatch.setattr(user, "source_values", crafted)
    exact = patching_sweep(model, clean, corrupt, ["resid_pre.2"], None, metric, method="loop")
    star = patching_sweep(model, clean, corrupt, ["resid_pre.2"], None, metric, method="atp*")
    plain = patching_sweep(model, clean, corrupt, ["resid_pre.2"], None, metric, method="attribution")
    star_err = float((star.values - exact.values).abs().max())
    plain_err = float((plain.values - exact.values).abs().max())
    assert star_err < 2e-6 and plain_err > 20 * star_err, (star_err, plain_err)  # the softmax is not linear
    assert star.method == "atp*" and any("QK fix" in n for n in star.notes)


def test_atp_star_without_a_difference_and_on_every_site_kind(llama_tiny) -> None:
    clean, corrupt = _pair()
    sites = ["embed", "resid_pre.1", "attn_out.0", "mlp_out.1", "resid_mid.1", "resid_post.2"]
    same = patching_sweep(llama_tiny, clean, clean, sites, None, metric, method="atp*")
    torch.testing.assert_close(same.values, torch.full_like(same.values, same.base_metric), atol=1e-5, rtol=0)
    heads = head_sweep(llama_tiny, clean, corrupt, metric, method="atp*")
    exact = head_sweep(llama_tiny, clean, corrupt, metric)
    assert heads.values.shape == exact.values.shape and heads.row_labels == exact.row_labels
    # the last layer's outputs feed no attention: AtP* is plain AtP there
    a = patching_sweep(llama_tiny, clean, corrupt, ["resid_post.2", "resid_pre.1"], None, metric,
                       method="attribution")
    s = patching_sweep(llama_tiny, clean, corrupt, ["resid_post.2", "resid_pre.1"], None, metric, method="atp*")
    torch.testing.assert_close(s.values[0], a.values[0], atol=1e-5, rtol=1e-5)


def test_atp_star_is_closer_to_the_exact_sweep(llama_tiny) -> None:
    """On a tiny random model, the QK fix moves the resid_pre estimates towards the exact sweep."""
    clean, corrupt = _pair()
    sites = "resid_pre.*"
    exact = patching_sweep(llama_tiny, clean, corrupt, sites, None, metric).values.flatten()
    errs = {}
    for m in ("attribution", "atp*"):
        est = patching_sweep(llama_tiny, clean, corrupt, sites, None, metric, method=m).values.flatten()
        errs[m] = float((est - exact).abs().mean())
    assert errs["atp*"] < errs["attribution"], errs


def test_atp_star_partial_forwards_equal_full_forwards(llama_tiny, monkeypatch) -> None:
    """The QK-fix patterns from partial forwards (KV prefix, start layer) == from full forwards stopped early."""
    import lmscope.interventions.partial as partial

    clean, corrupt = _pair()
    sites = ["embed", "resid_pre.1", "attn_out.0", "mlp_out.1", "resid_mid.1", "resid_post.0", "head_z.1"]
    fast = patching_sweep(llama_tiny, clean, corrupt, sites, None, metric, method="atp*", batch_size=3)
    fast_heads = head_sweep(llama_tiny, clean, corrupt, metric, method="atp*")
    monkeypatch.setattr(partial, "partial_forward_unsupported", lambda model, length=None: "forced off for the test")
    slow = patching_sweep(llama_tiny, clean, corrupt, sites, None, metric, method="atp*")
    torch.testing.assert_close(fast.values, slow.values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_heads.values, head_sweep(llama_tiny, clean, corrupt, metric, method="atp*").values,
                               atol=1e-5, rtol=1e-5)
    plain = patching_sweep(llama_tiny, clean, corrupt, sites, None, metric, method="attribution")
    assert not torch.allclose(fast.values, plain.values, atol=1e-7)  # the fix changed something


def test_heads_whose_own_output_changes_a_lot_are_named_in_the_notes(llama_tiny) -> None:
    """A head moves the residual stream little, so relative_delta alone never flags it; relative_change (the change
    against the head's own output, through W_O) does: the note counts exactly the head rows above LARGE_CHANGE
    and names the worst first. Neuron rows are flagged by the stream measure only."""
    clean, corrupt = _pair()
    heads = head_sweep(llama_tiny, clean, corrupt, metric, method="attribution")
    src = llama_tiny.run(clean, [Cache("head_z.*")]).cache
    base = llama_tiny.run(corrupt, [Cache("head_z.*")]).cache
    for r, label in enumerate(heads.row_labels):  # by hand: ‖Δ_h W_O[h]‖ / ‖a_h W_O[h]‖ over all positions
        layer, head = int(label.split(".")[1].split(":")[0]), int(label.split(":h")[1])
        w_o = llama_tiny.output_projection(layer)[0][head].detach()
        a = base[f"head_z.{layer}"][0, :, head] @ w_o
        d = src[f"head_z.{layer}"][0, :, head] @ w_o - a
        assert float(heads.extras["relative_change"][r, 0]) == pytest.approx(float(d.norm() / a.norm()), rel=1e-4)
    change = heads.extras["relative_change"][:, 0]
    flagged = int((change > LARGE_CHANGE).sum())
    assert flagged > 0 and float(heads.extras["relative_delta"].max()) < LARGE_DELTA  # the old count missed them
    note = next(n for n in heads.notes if "outside the linear regime" in n)
    assert note.startswith(f"{flagged} of {len(heads.row_labels)} cells")
    worst = heads.row_labels[int(change.argmax())]
    assert f"Worst first: {worst} @ 'all'" in note and "method='exact'" in note
    neurons = patching_sweep(llama_tiny, clean, corrupt, "mlp_post.1", "all", metric, neurons=True,
                             method="attribution")
    assert float(neurons.extras["relative_change"].max()) > LARGE_CHANGE  # large own change, small stream change
    expected = int((neurons.extras["relative_delta"] > LARGE_DELTA).sum())
    counted = [n.split(" of ")[0] for n in neurons.notes if "outside the linear regime" in n]
    assert counted == ([str(expected)] if expected else [])


def test_a_dataset_gets_one_linear_regime_note_from_the_worst_pair(llama_tiny) -> None:
    """Over pairs the distance from the linear regime is the largest (a cell far out in one pair is flagged, not
    averaged away), while the scores stay the mean."""
    pairs = [_pair(), (random_ids((6,), 5), random_ids((6,), 6))]
    data = head_sweep(llama_tiny, [c.tolist() for c, _ in pairs], [k.tolist() for _, k in pairs], metric,
                      method="attribution")
    each = [head_sweep(llama_tiny, [c.tolist()], [k.tolist()], metric, method="attribution") for c, k in pairs]
    for key in ("relative_delta", "relative_change"):
        torch.testing.assert_close(data.extras[key], torch.maximum(each[0].extras[key], each[1].extras[key]))
    torch.testing.assert_close(data.values, (each[0].values + each[1].values) / 2)
    notes = [n for n in data.notes if "outside the linear regime" in n]
    flagged = int((data.extras["relative_change"] > LARGE_CHANGE).sum())
    assert flagged > 0 and len(notes) == 1 and notes[0].startswith(f"{flagged} of {len(data.row_labels)} cells")
