"""Every intervention saves to JSON + safetensors and loads back equal (and behaves the same)."""

from __future__ import annotations

import json

import torch

from lmscope.interventions import (
    Ablate,
    Cache,
    Edit,
    HookedModel,
    Intervention,
    Patch,
    Steer,
    load_interventions,
    save_interventions,
)


def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def examples(model: HookedModel) -> list[Intervention]:
    g = torch.Generator().manual_seed(0)
    return [
        Cache(["resid_post.*", "head_z.0"], positions=-1, dtype=torch.float16),
        Steer("resid_pre.1", torch.randn(model.d_model, generator=g), scale=2.5, positions=slice(1, 3)),
        Steer(["resid_post.0", "mlp_out.1"], torch.randn(model.d_model, generator=g), normalize=True),
        Patch("resid_pre.2", torch.randn(6, model.d_model, generator=g), positions=[[0, 1], [slice(2, 4)]]),
        Patch("head_z.1", [[4, 5, 6, 7, 8]], positions=[1, 2], source_positions=[3, 4]),
        Ablate("head_z.0", heads=[0, 3], how="mean", reference=["dummy"] if model.tokenizer else None),
        Ablate("mlp_out.2", how="resample", seed=3, positions="prompt"),
        Edit("attn_out.0", double, positions=[0]),
    ]


def test_round_trip_each(llama_tiny: HookedModel, tmp_path) -> None:
    for i, iv in enumerate(examples(llama_tiny)):
        folder = tmp_path / f"iv{i}"
        iv.save(folder)
        assert json.loads((folder / "intervention.json").read_text())["type"] == type(iv).__name__
        loaded = Intervention.load(folder)
        assert loaded == iv, iv
        assert loaded is not iv


def test_round_trip_list_behaves_the_same(llama_tiny: HookedModel, tmp_path) -> None:
    ivs = [iv for iv in examples(llama_tiny) if not isinstance(iv, Cache)]
    ivs = [iv for iv in ivs if not (isinstance(iv, Patch) and iv.source is None and iv.positions != [1, 2])]
    save_interventions(ivs, tmp_path / "all")
    loaded = load_interventions(tmp_path / "all")
    assert loaded == ivs
    tokens = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert torch.equal(llama_tiny.run(tokens, ivs).logits, llama_tiny.run(tokens, loaded).logits)


def test_unsaveable_edit_says_why(llama_tiny: HookedModel, tmp_path) -> None:
    import pytest

    from lmscope.interventions import InputError

    with pytest.raises(InputError, match="module-level"):
        Edit("resid_post.0", lambda x: x).save(tmp_path / "x")
    assert not (tmp_path / "x").exists()
