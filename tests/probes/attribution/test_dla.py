"""Direct logit attribution: exact sums on every architecture, per-position split, ablation check, errors."""

from __future__ import annotations

import pytest
import torch
from tiny_models import skip_lazy_miscompute

from lmscope.interventions import Ablate, Cache, HookedModel, Patch
from lmscope.interventions.errors import InputError, UnsupportedArchitectureError
from lmscope.probes.attribution import attribute, linearise_norm

PROMPT = [3, 17, 42, 8, 55, 21]


def test_terms_sum_to_the_logit_on_every_architecture(tiny: HookedModel) -> None:
    skip_lazy_miscompute(tiny, "DLA")
    a = attribute(tiny, PROMPT, target=11)
    logits = tiny.run([PROMPT]).logits[0, -1].float()
    cap = tiny.arch.logit_softcap(tiny.hf_model.config)
    if cap:  # Gemma 2/3 soft-cap the logits: the decomposed quantity is the logit before the cap, and a note says so
        logits = torch.atanh(logits / cap) * cap
        assert a.notes[-1].startswith("final logit soft-cap")
        a.notes.pop()
    assert a.logit == pytest.approx(float(logits[11]), abs=1e-5)  # the model's own (sdpa) logit
    assert a.total == pytest.approx(a.logit, abs=1e-4 * max(1.0, abs(a.logit)))
    assert sum(a.terms().values()) == pytest.approx(a.logit, abs=1e-4)
    torch.testing.assert_close(a.heads.sum(1) + a.attn_bias, a.attn, rtol=1e-4, atol=1e-5)
    if "attn_pattern" not in tiny.available_kinds:  # Falcon with ALiBi: per-head terms only, and a note says so
        assert a.head_positions is None and len(a.notes) == 1 and "attn_pattern" in a.notes[0]
    else:  # the per-position split of each head sums to that head's term
        assert a.head_positions is not None and a.head_positions.shape == (tiny.n_layers, tiny.n_heads, len(PROMPT))
        torch.testing.assert_close(a.head_positions.sum(-1), a.heads, rtol=1e-4, atol=1e-5)
        assert not a.notes


def test_logit_difference_is_the_difference_of_attributions(llama_tiny: HookedModel) -> None:
    a, b = attribute(llama_tiny, PROMPT, 11, per_position=False), attribute(llama_tiny, PROMPT, 30, per_position=False)
    d = attribute(llama_tiny, PROMPT, 11, contrast=30, per_position=False)
    assert d.logit == pytest.approx(a.logit - b.logit, abs=1e-5)
    torch.testing.assert_close(d.heads, a.heads - b.heads, rtol=1e-4, atol=1e-6)
    assert d.head_positions is None


def _sigma(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", 1e-6)
    if isinstance(norm, torch.nn.LayerNorm):
        return torch.sqrt((x - x.mean()).pow(2).mean() + eps)
    return torch.sqrt(x.pow(2).mean() + eps)


def test_zero_ablating_a_last_layer_head_changes_the_frozen_logit_by_its_direct_term(tiny: HookedModel) -> None:
    skip_lazy_miscompute(tiny, "DLA")
    config = tiny.hf_model.config
    if tiny.arch.attn_post_norm or tiny.arch.logit_scale(config) or tiny.arch.logit_softcap(config):
        pytest.skip("the constructed case freezes only the final norm: a post-attention norm (Gemma 2/3, OLMo-2) or a "
                    "logit scale / soft-cap would also move under the ablation (the exact-sum test covers these)")
    """Constructed case where nothing downstream reads the head: last layer, its MLP output patched back to the
    clean run's value (the MLP would otherwise read the head through resid_mid), and the final norm's scale
    frozen at the clean run's: ``y_frozen = b + (norm(x_abl) - b) * σ(x_abl) / σ(x_clean)`` with the model's own
    norm module (σ = RMS, or the standard deviation for LayerNorm, eps included). Then
    ``logit_frozen(ablated) - logit(clean) = -direct term of the head``."""
    L, t = tiny.n_layers - 1, 11
    a = attribute(tiny, PROMPT, t, per_position=False)
    clean = tiny.run([PROMPT], [Cache([f"resid_post.{L}", f"mlp_out.{L}"])])
    norm, w_u = tiny.final_norm, tiny.unembed_weight.detach().float()
    bias = norm.bias.float() if getattr(norm, "bias", None) is not None else \
        torch.zeros(tiny.d_model, device=w_u.device)
    x_clean = clean.cache[f"resid_post.{L}"][0, -1]
    for head in range(tiny.n_heads):
        keep_mlp = Patch(f"mlp_out.{L}", {f"mlp_out.{L}": clean.cache[f"mlp_out.{L}"]})
        abl = tiny.run([PROMPT], [Ablate(f"head_z.{L}", heads=head), keep_mlp, Cache(f"resid_post.{L}")])
        x_abl = abl.cache[f"resid_post.{L}"][0, -1]
        with torch.no_grad():
            y = (norm(x_abl[None])[0] - bias) * _sigma(norm, x_abl) / _sigma(norm, x_clean) + bias
        u_bias = getattr(tiny.unembed, "bias", None)  # GPT-J's head has a bias
        frozen = float(w_u[t] @ y) + (float(u_bias[t].detach()) if u_bias is not None else 0.0)
        assert frozen - a.logit == pytest.approx(-float(a.heads[L, head]), abs=2e-5)


class _Doubler(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_bad_input(llama_tiny: HookedModel) -> None:
    with pytest.raises(InputError, match="outside the vocabulary"):
        attribute(llama_tiny, PROMPT, target=10_000)
    with pytest.raises(InputError, match="one prompt .* or a dataset"):
        attribute(llama_tiny, 3.5, target=3)
    with pytest.raises(InputError, match="no tokenizer"):
        attribute(llama_tiny, PROMPT, target=" Paris")
    with pytest.raises(InputError, match="single-token"):
        attribute(llama_tiny, PROMPT, target=1.5)
    with pytest.raises(UnsupportedArchitectureError, match="neither LayerNorm nor RMSNorm"):
        linearise_norm(_Doubler(), torch.randn(4))


def test_heatmap_and_top_terms(llama_tiny: HookedModel, tmp_path) -> None:
    a = attribute(llama_tiny, PROMPT, 11)
    terms = a.terms()
    top = a.top(5)
    assert len(top) == 5 and all(terms[name] == value for name, value in top)
    sizes = [abs(value) for _, value in top]
    assert sizes == sorted(sizes, reverse=True)  # largest first ...
    rest = [abs(value) for name, value in terms.items() if name not in dict(top)]
    assert max(rest) <= sizes[-1]  # ... and no term left out is larger than the smallest one kept
    a.heatmap(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000


def test_unembedding_bias_is_read_without_a_requires_grad_warning(one_thread: None) -> None:
    """GPT-J's unembedding has a bias (a Parameter): reading it into a float must not warn about requires_grad."""
    import warnings

    from tiny_models import build_tiny

    model = HookedModel(build_tiny("gptj"))
    assert getattr(model.unembed, "bias", None) is not None
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*requires_grad.*")
        a = attribute(model, PROMPT, target=11, contrast=30, per_position=False)
    assert a.total == pytest.approx(a.logit, abs=1e-4 * max(1.0, abs(a.logit)))
