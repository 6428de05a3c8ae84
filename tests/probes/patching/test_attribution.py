"""Attribution patching: the estimate is (source - base) · ∂metric/∂site, computed by hand independently."""

from __future__ import annotations

import pytest
import torch
from tiny_models import random_ids

from lmscope.interventions import Cache
from lmscope.interventions.partial import run_from_layer
from lmscope.probes.patching import LARGE_DELTA, head_sweep, patching_sweep


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
