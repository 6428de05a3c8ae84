"""(layer, head) selections across layers for Ablate, Patch and Cache: equal to per-site forms, validated, saved."""

from __future__ import annotations

import pytest
import torch

from lmscope.interventions import Ablate, Cache, HookedModel, InputError, Intervention, Patch

TOKENS = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
SOURCE = [[11, 12, 13, 14, 15], [16, 17, 18, 19, 20]]
PAIRS = [(0, 1), (2, 3), (0, 2), (-1, 0)]  # layer 2 twice (as 2 and -1), layer 0 twice


def test_ablate_pairs_equal_per_site_ablations(llama_tiny: HookedModel) -> None:
    pairs = llama_tiny.run(TOKENS, [Ablate(heads=PAIRS, positions=-1)]).logits
    per_site = llama_tiny.run(TOKENS, [Ablate("head_z.0", heads=[1, 2], positions=-1),
                                       Ablate("head_z.2", heads=[3, 0], positions=-1)]).logits
    assert torch.equal(pairs, per_site)
    z = llama_tiny.run(TOKENS, [Ablate(heads=PAIRS), Cache("head_z.*")]).cache
    assert torch.all(z["head_z.0"][:, :, [1, 2]] == 0) and torch.all(z["head_z.2"][:, :, [0, 3]] == 0)
    assert torch.all(z["head_z.0"][:, :, [0, 3]] != 0) and torch.all(z["head_z.2"][:, :, [1, 2]] != 0)
    assert torch.all(z["head_z.1"] != 0)  # a layer without a pair is untouched


def test_patch_pairs_write_only_those_heads(llama_tiny: HookedModel) -> None:
    base = llama_tiny.run(TOKENS, [Cache("head_z.*")]).cache
    src = llama_tiny.run(SOURCE, [Cache("head_z.*")]).cache
    out = llama_tiny.run(TOKENS, [Patch(None, SOURCE, heads=[(0, 1), (2, 3)], positions=[1, 3]),
                                  Cache(["head_z.0", "head_z.2"])])
    for layer, head in ((0, 1), (2, 3)):
        got, want, keep = out.cache[f"head_z.{layer}"], src[f"head_z.{layer}"], base[f"head_z.{layer}"]
        assert torch.allclose(got[:, [1, 3], head], want[:, [1, 3], head], atol=1e-6)
    got, keep = out.cache["head_z.0"], base["head_z.0"]  # layer 0 reads nothing patched: the rest is unchanged
    assert torch.equal(got[:, [0, 2, 4], 1], keep[:, [0, 2, 4], 1])
    assert torch.equal(out.cache["head_z.0"][:, :, [0, 2, 3]], base["head_z.0"][:, :, [0, 2, 3]])
    # per-site heads= on Patch equals the loop's "mix the base run's other heads by hand"
    mixed = base["head_z.1"].clone()
    mixed[:, :, 2] = src["head_z.1"][:, :, 2]
    by_hand = llama_tiny.run(TOKENS, [Patch("head_z.1", mixed)]).logits
    by_heads = llama_tiny.run(TOKENS, [Patch("head_z.1", src["head_z.1"], heads=[2])]).logits
    assert torch.allclose(by_heads, by_hand, atol=1e-6)


def test_cache_pairs_record_the_selected_heads(llama_tiny: HookedModel) -> None:
    full = llama_tiny.run(TOKENS, [Cache("head_z.*")]).cache
    cache = Cache(heads=[(2, 3), (0, 1), (2, 0)])
    llama_tiny.run(TOKENS, [cache])
    assert list(cache.cache) == ["head_z.0", "head_z.2"]
    assert cache.selected_heads("head_z.2") == [3, 0] and cache.selected_heads("head_z.0") == [1]
    assert torch.equal(cache["head_z.2"], full["head_z.2"][:, :, [3, 0]])
    assert torch.equal(cache["head_z.0"], full["head_z.0"][:, :, [1]])
    per_site = Cache("head_z.1", heads=[2, -1])
    llama_tiny.run(TOKENS, [per_site])
    assert torch.equal(per_site["head_z.1"], full["head_z.1"][:, :, [2, 3]])


@pytest.mark.parametrize("make, message", [
    (lambda: Ablate(heads=[(3, 0)]), r"Layer 3 of head \(3, 0\) is out of range: this model has 3 layers "
                                     r"\(valid 0..2, or -3..-1"),
    (lambda: Ablate(heads=[(0, 4)]), r"Head index 4 of head \(0, 4\) is out of range.*valid 0..3"),
    (lambda: Patch(None, SOURCE, heads=[(-4, 0)]), r"Layer -4 .*valid 0..2"),
    (lambda: Cache(heads=[(1, -5)]), r"Head index -5 .*valid 0..3"),
    (lambda: Ablate("head_z.0", heads=[(0, 1)]), "drop site='head_z.0'"),
    (lambda: Ablate(heads=[1, (0, 1)]), "mixes forms"),
    (lambda: Cache(heads=[(0, 1, 2)]), "mixes forms or has a malformed entry"),
    (lambda: Ablate(heads=[1, 2]), r"name the per-head site\(s\) they belong to \(e.g. 'head_z.3', 'v.3'\)"),
    (lambda: Ablate(), "needs a site"),
    (lambda: Patch(None, heads=[(0, 1)]), "needs values_or_source"),
    (lambda: Cache("mlp_out.0", heads=[1]), r"heads= selects heads of a per-head site \(q, k, v, rot_q, rot_k, "
                                            r"attn_scores, attn_pattern, head_z, head_out\), not of mlp_out.0"),
    (lambda: Ablate(heads=[]), "non-empty list"),
])
def test_bad_head_selections_are_refused(llama_tiny: HookedModel, make, message) -> None:
    with pytest.raises(InputError, match=message):
        llama_tiny.run(TOKENS, [make()])


@pytest.mark.parametrize("make", [
    lambda: Ablate(heads=PAIRS, how="mean", positions=-1),
    lambda: Ablate("head_z.1", heads=[0, 2]),
    lambda: Patch(None, torch.randn(5, 4, 8), heads=[(0, 1), (2, 3)]),
    lambda: Patch(None, SOURCE, heads=[(1, 1)], positions=[0, 2]),
    lambda: Cache(heads=[(2, 3), (0, 1)]),
    lambda: Cache("head_z.0", heads=[3]),
])
def test_head_selections_round_trip(llama_tiny: HookedModel, make, tmp_path) -> None:
    iv = make()
    iv.save(tmp_path / "iv")
    back = Intervention.load(tmp_path / "iv")
    assert back == iv and back.heads == iv.heads
    if not isinstance(iv, Cache):
        assert torch.equal(llama_tiny.run(TOKENS, [back]).logits, llama_tiny.run(TOKENS, [iv]).logits)


def test_head_selections_on_the_nnsight_backend_equal_hooks(llama_tiny: HookedModel) -> None:
    pytest.importorskip("nnsight", reason="the nnsight extra (pip install 'lmscope[nnsight]')")
    ivs = [Ablate(heads=[(0, 1), (2, 3)], how="mean", per_position=True, positions=[0, -1]),
           Patch(None, SOURCE, heads=[(1, 2)], positions=-1), Cache(heads=[(2, 0), (1, 2)])]
    hooks = llama_tiny.run(TOKENS, ivs)
    nns = llama_tiny.run(TOKENS, ivs, backend="nnsight")
    torch.testing.assert_close(nns.logits, hooks.logits, atol=1e-5, rtol=0)
    for name in ("head_z.1", "head_z.2"):
        assert nns.cache[name].shape[2] == 1
        torch.testing.assert_close(nns.cache[name], hooks.cache[name], atol=1e-5, rtol=0)
