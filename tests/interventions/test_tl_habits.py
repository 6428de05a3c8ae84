"""TransformerLens habits (issue 29): ``run_with_cache``, name filters, ``cache["resid_pre", 3]``, ``get_act_name``.

The values themselves are compared with TransformerLens's bridge in ``test_transformerlens_peer.py``; these tests
check the lmscope side: each habit selects the same sites and values as the lmscope spelling.
"""

from __future__ import annotations

import pytest
import torch

from lmscope.interventions import Cache, HookedModel, InputError, SiteError, get_act_name
from lmscope.interventions.tl_names import filter_sites, tl_name

TOKENS = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]


def _names(model: HookedModel, names_filter) -> list[str]:  # type: ignore[no-untyped-def]
    return [s.name for s in filter_sites(model, names_filter)]


def test_run_with_cache_returns_the_logits_and_a_cache_like_run(llama_tiny: HookedModel) -> None:
    logits, cache = llama_tiny.run_with_cache(TOKENS, names_filter=["blocks.1.hook_resid_pre", "head_z.2"])
    plain = llama_tiny.run(TOKENS, [Cache(["resid_pre.1", "head_z.2"])])
    assert torch.equal(logits, plain.logits)
    assert list(cache) == ["head_z.2", "resid_pre.1"]
    assert torch.equal(cache["blocks.1.hook_resid_pre"], plain.cache["resid_pre.1"])
    assert torch.equal(cache["head_z.2"], plain.cache["head_z.2"])
    assert cache.attention_mask is not None  # unpad works as on run's cache
    _, on_cpu = llama_tiny.run_with_cache(TOKENS, "resid_post.0", device="cpu")
    assert on_cpu["resid_post.0"].device.type == "cpu"


def test_run_with_cache_runs_other_interventions_in_the_same_forward(llama_tiny: HookedModel) -> None:
    from lmscope.interventions import Ablate

    logits, cache = llama_tiny.run_with_cache(TOKENS, "head_z.1", interventions=Ablate("head_z.1", heads=[0]))
    assert torch.all(cache["head_z.1"][:, :, 0] == 0)
    assert torch.equal(logits, llama_tiny.run(TOKENS, [Ablate("head_z.1", heads=[0])]).logits)


def test_names_filters_as_in_transformerlens(llama_tiny: HookedModel) -> None:
    every = llama_tiny.sites()
    assert _names(llama_tiny, None) == every
    assert _names(llama_tiny, "blocks.2.attn.hook_pattern") == ["attn_pattern.2"]
    assert _names(llama_tiny, ["hook_embed", "resid_post.*"]) == ["embed", "resid_post.0", "resid_post.1",
                                                                   "resid_post.2"]
    # a predicate is asked about TransformerLens names first...
    assert _names(llama_tiny, lambda n: n.endswith("hook_z")) == ["head_z.0", "head_z.1", "head_z.2"]
    assert _names(llama_tiny, lambda n: not n.endswith("hook_pattern")) == [
        s for s in every if not s.startswith("attn_pattern")]
    # ...and about lmscope names when it accepts none of those
    assert _names(llama_tiny, lambda n: n.startswith("mlp_post")) == ["mlp_post.0", "mlp_post.1", "mlp_post.2"]
    with pytest.raises(InputError, match="names_filter accepts no site of this model"):
        _names(llama_tiny, lambda n: False)
    with pytest.raises(InputError, match="names_filter must be None, a name, a list of names or a function"):
        _names(llama_tiny, 3)
    assert tl_name(llama_tiny.resolve("head_out.1")[0]) == "blocks.1.attn.hook_result"


def test_run_with_cache_without_a_filter_caches_every_site(llama_tiny: HookedModel) -> None:
    logits, cache = llama_tiny.run_with_cache(TOKENS)
    assert list(cache) == sorted(llama_tiny.sites()) and len(cache) == len(llama_tiny.sites())
    torch.testing.assert_close(logits, llama_tiny.run(TOKENS).logits, atol=1e-5, rtol=0)  # eager vs sdpa rounding


def test_cache_takes_a_name_filter_function(llama_tiny: HookedModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cache = Cache(lambda name: name.endswith("hook_v"), heads=[1])
    result = llama_tiny.run(TOKENS, [cache])
    full = llama_tiny.run(TOKENS, [Cache("v.*")]).cache
    assert list(result.cache) == ["v.0", "v.1", "v.2"]
    assert all(torch.equal(result.cache[n], full[n][:, :, [1]]) for n in ("v.0", "v.1", "v.2"))
    assert "names_filter" in repr(cache) and cache == cache and cache != Cache("v.*")
    with pytest.raises(InputError, match="A Cache with a name filter function cannot be saved"):
        cache.save(tmp_path / "c")


def test_cache_indexing_with_transformerlens_keys(llama_tiny: HookedModel) -> None:
    _, cache = llama_tiny.run_with_cache(TOKENS)
    for key, ours in [(("resid_pre", 1), "resid_pre.1"), (("resid_pre", -1), "resid_pre.2"),
                      (("z", 0), "head_z.0"), (("pattern", 2), "attn_pattern.2"), (("normalized", 1, "ln2"), "ln2.1"),
                      (("post", 0), "mlp_post.0"), (("result", 1), "head_out.1"), (("embed",), "embed"),
                      ("k1", "k.1"), ("pre2", "mlp_pre.2"), ("blocks.0.attn.hook_rot_q", "rot_q.0"),
                      ("ln_final.hook_normalized", "final_norm")]:
        assert torch.equal(cache[key], cache[ours]), key
        assert key in cache
    assert ("scale", 1) not in cache and "resid_pre" not in cache
    with pytest.raises(InputError, match=r"A cache key tuple is \(name, layer\[, layer_type\]\)"):
        cache["resid_pre", 1, "x", 4]
    with pytest.raises(SiteError, match="Unknown site kind 'nonsense'"):
        cache["nonsense"]


@pytest.mark.parametrize("args, expected", [
    (("resid_pre", 3), "resid_pre.3"), (("resid_pre", -1), "resid_pre.-1"), (("resid_post", "*"), "resid_post.*"),
    (("z", 3), "head_z.3"), (("pattern", 0), "attn_pattern.0"), (("attn", 0), "attn_pattern.0"),
    (("attn_scores", 2), "attn_scores.2"), (("attn_logits", 2), "attn_scores.2"), (("q", 1), "q.1"),
    (("key", 1), "k.1"), (("value", 1), "v.1"), (("rot_k", 1), "rot_k.1"), (("result", 4), "head_out.4"),
    (("head_out", 4), "head_out.4"), (("pre", 2), "mlp_pre.2"), (("mlp_pre", 2), "mlp_pre.2"),
    (("post", 2), "mlp_post.2"), (("mlp_post", 2), "mlp_post.2"), (("k", 6, "a"), "k.6"),
    (("normalized", 27, "ln2"), "ln2.27"), (("normalized", 3, "ln1"), "ln1.3"), (("normalized",), "final_norm"),
    (("embed",), "embed"), (("logits",), "logits"), (("k6",), "k.6"), (("pre5",), "mlp_pre.5"),
    (("normalized3ln1",), "ln1.3"), (("blocks.3.attn.hook_z",), "head_z.3"), (("hook_embed",), "embed"),
    (("resid_mid.3",), "resid_mid.3"),
])
def test_get_act_name(args: tuple, expected: str) -> None:
    assert get_act_name(*args) == expected


@pytest.mark.parametrize("args, message", [
    (("scale", 4, "ln1"), "TransformerLens's 'scale' has no lmscope site"),
    (("normalized", 3), "'normalized' of a layer needs layer_type 'ln1' or 'ln2'"),
    (("resid_pre",), r"'resid_pre' is per layer: give a layer, e.g. get_act_name\('resid_pre', 3\)"),
    (("embed", 0), "'embed' is model-wide and takes no layer"),
    (("resid", 0), "Unknown activation name 'resid'"),
    (("z", 1.5), "layer must be an int"),
    ((3,), "get_act_name needs a name string"),
])
def test_get_act_name_refusals(args: tuple, message: str) -> None:
    with pytest.raises(InputError, match=message):
        get_act_name(*args)
