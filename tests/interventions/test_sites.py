"""Site grammar: names, wildcards, negative layers, and specific errors."""

from __future__ import annotations

import pytest

from lmscope.interventions import HookedModel, SiteError
from lmscope.interventions.sites import Site, resolve_sites


def test_resolution() -> None:
    assert resolve_sites("resid_post.3", 5) == [Site("resid_post", 3)]
    assert resolve_sites("resid_post.-1", 5) == [Site("resid_post", 4)]
    assert resolve_sites("head_z.*", 3) == [Site("head_z", i) for i in range(3)]
    assert resolve_sites(["logits", "embed", "logits"], 3) == [Site("logits"), Site("embed")]


@pytest.mark.parametrize("name, message", [
    ("resid_pots.1", "Did you mean 'resid_post'"),
    ("resid_post.7", "valid layers are 0..4"),
    ("resid_post.-6", "valid layers are 0..4"),
    ("resid_post", "needs a layer"),
    ("logits.2", "takes no layer"),
    ("resid post 3", "Malformed"),
])
def test_errors_are_specific(name: str, message: str) -> None:
    with pytest.raises(SiteError, match=message):
        resolve_sites(name, 5)


def test_model_sites_listing(tiny: HookedModel) -> None:
    names = tiny.sites()
    assert names[0] == "embed" and names[-2:] == ["final_norm", "logits"]
    assert f"resid_post.{tiny.n_layers - 1}" in names
    assert ("resid_mid.0" in names) == ("resid_mid" in tiny.available_kinds)
    assert tiny.sites("attn_out.*") == [f"attn_out.{i}" for i in range(tiny.n_layers)]


def test_parallel_residual_has_no_resid_mid() -> None:
    from tiny_models import build_tiny

    model = HookedModel(build_tiny("gpt_neox"))
    with pytest.raises(SiteError, match="parallel residual"):
        model.resolve("resid_mid.0")
    assert "resid_mid" in HookedModel(build_tiny("gpt_neox_sequential")).available_kinds


def test_every_registered_architecture_is_in_the_docs_table() -> None:
    """docs/architectures.md's table lists every model type of the adapter table (and no unknown one)."""
    import re
    from pathlib import Path

    from lmscope.interventions import ARCHITECTURES

    text = (Path(__file__).parents[2] / "docs" / "architectures.md").read_text()
    table = text.split("## Supported architectures")[1].split("\n## ")[0]
    listed = set(re.findall(r"^\|[^|]+\| `([a-z0-9_]+)` \|", table, flags=re.M))
    assert listed - {"model_type"} == set(ARCHITECTURES)


def test_transformerlens_names_resolve_to_our_sites(tiny: HookedModel) -> None:
    """Every alias of the table resolves to the same Site as our name, or (a kind this model lacks) to the same
    SiteError; wildcards and negative layers work as in our names."""
    import re

    from lmscope.interventions.sites import TL_ALIASES, from_transformerlens

    for alias, kind in TL_ALIASES.items():
        for layer in (["1", "-1", "*"] if "{L}" in alias else [None]):
            tl = alias.replace("{L}", layer) if layer else alias
            ours = f"{kind}.{layer}" if layer else kind
            assert from_transformerlens(tl) == ours
            try:
                want = tiny.resolve(ours)
            except SiteError as err:
                with pytest.raises(SiteError, match=re.escape(str(err).split(" in ")[0][:30])):
                    tiny.resolve(tl)
            else:
                assert tiny.resolve(tl) == want


def test_transformerlens_names_work_in_interventions_and_caches(llama_tiny: HookedModel) -> None:
    import torch

    from lmscope.interventions import Cache, Patch

    tokens = [[1, 2, 3, 4]]
    out = llama_tiny.run(tokens, [Cache(["blocks.1.hook_resid_pre", "blocks.0.attn.hook_z", "hook_embed"])])
    assert sorted(out.cache) == ["embed", "head_z.0", "resid_pre.1"]
    assert torch.equal(out.cache["blocks.1.hook_resid_pre"], out.cache["resid_pre.1"])
    patched = llama_tiny.run(tokens, [Patch("blocks.2.hook_mlp_out", [[5, 6, 7, 8]])]).logits
    assert torch.equal(patched, llama_tiny.run(tokens, [Patch("mlp_out.2", [[5, 6, 7, 8]])]).logits)


@pytest.mark.parametrize("name, message", [
    ("blocks.3.hook_resid_pr", r"Did you mean 'resid_pre.3' \(TransformerLens 'blocks.3.hook_resid_pre'\)"),
    ("blocks.2.attn.hook_zz", r"Did you mean 'head_z.2' \(TransformerLens 'blocks.2.attn.hook_z'\)"),
    ("ln_final.hook_normalised", r"Did you mean 'final_norm'"),
    ("blocks.9.hook_resid_post", r"out of range in 'blocks.9.hook_resid_post'.*valid layers are 0..4"),
])
def test_transformerlens_typos_suggest_our_names(name: str, message: str) -> None:
    with pytest.raises(SiteError, match=message):
        resolve_sites(name, 5)


def test_head_labels_round_trip() -> None:
    from lmscope.interventions.sites import head_label, parse_head_label

    for site, head in ((Site("head_z", 3), 2), (Site("resid_pre", 0), None), (Site("embed"), None)):
        assert parse_head_label(head_label(site, head)) == (site, head)
    for bad in ("head_z.3:hx", "resid_pre.*", "head_z.-1:h2", "resid pre", "mlp_post.1:x3", "mlp_post.1:n"):
        with pytest.raises(SiteError, match="not a concrete site label"):
            parse_head_label(bad)


def test_neuron_labels_round_trip() -> None:
    from lmscope.interventions.sites import head_label, parse_cell_label, parse_head_label

    assert head_label(Site("mlp_post", 3), None, 1042) == "mlp_post.3:n1042"
    assert parse_cell_label("mlp_post.3:n1042") == (Site("mlp_post", 3), None, 1042)
    assert parse_cell_label("v.2:h1") == (Site("v", 2), 1, None)
    with pytest.raises(SiteError, match="is a neuron label, not a site or head label"):
        parse_head_label("mlp_post.3:n1042")
