"""The nnsight backend gives the hooks backend's results for every intervention kind on every architecture."""

from __future__ import annotations

import pytest
import torch
from lmscope.interventions import Ablate, Cache, Edit, HookedModel, InputError, Patch, SiteError, Steer

pytest.importorskip("nnsight", reason="the nnsight extra (pip install 'lmscope[nnsight]')")

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
SOURCE = [[1, 2, 3, 4, 5, 6], [7, 8, 9]]


def _double(value: torch.Tensor) -> torch.Tensor:
    return value * 2


def _interventions(model: HookedModel) -> list[list]:
    kinds = model.available_kinds
    mid = ["resid_mid.1"] if "resid_mid" in kinds else []
    return [
        [Cache(["embed", "resid_pre.*", "attn_out.*", "mlp_out.*", "resid_post.*", "head_z.1", "final_norm",
                "logits", *mid])],
        [Steer("resid_pre.1", torch.ones(model.d_model), positions=-1), Cache(["resid_post.-1", "logits"])],
        [Ablate("head_z.-1", heads=[0, 2]), Ablate("mlp_out.0", positions=[0]), Cache("resid_post.*")],
        [Patch("resid_post.0", SOURCE), Patch("attn_out.-1", SOURCE, positions=-1), Cache("head_z.-1")],
        [Edit("mlp_out.1", _double), Steer("embed", torch.ones(model.d_model)), Cache(["resid_pre.1", *mid])],
        ([Steer(mid[0], torch.ones(model.d_model)), Cache(["resid_post.1", "attn_out.1"])] if mid else []),
    ]


def test_nnsight_equals_hooks(tiny: HookedModel) -> None:
    for ivs in _interventions(tiny):
        if not ivs:
            continue
        hooks = tiny.run(PROMPTS, ivs)
        nns = tiny.run(PROMPTS, ivs, backend="nnsight")
        torch.testing.assert_close(nns.logits, hooks.logits, atol=1e-5, rtol=0)
        assert set(nns.cache) == set(hooks.cache)
        for name in hooks.cache:
            torch.testing.assert_close(nns.cache[name], hooks.cache[name], atol=1e-5, rtol=0)


def test_model_default_backend_and_errors(llama_tiny: HookedModel) -> None:
    model = HookedModel(llama_tiny.hf_model, backend="nnsight")
    ref = llama_tiny.run(PROMPTS, [Steer("resid_pre.-1", torch.ones(32))]).logits
    torch.testing.assert_close(model.run(PROMPTS, [Steer("resid_pre.-1", torch.ones(32))]).logits, ref,
                               atol=1e-5, rtol=0)
    with pytest.raises(SiteError, match="attn_pattern is not available with backend='nnsight'"):
        model.run(PROMPTS, [Cache("attn_pattern.0")])
    with pytest.raises(InputError, match="Unknown backend 'tl'"):
        llama_tiny.run(PROMPTS, backend="tl")
    with pytest.raises(InputError, match="remote=True .* backend='nnsight'"):
        llama_tiny.run(PROMPTS, remote=True)


def test_remote_is_refused_up_front(llama_tiny: HookedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmscope.interventions.backends.nnsight import RemoteError

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    with pytest.raises(RemoteError, match="Edit runs arbitrary Python"):
        llama_tiny.run(PROMPTS, [Edit("resid_pre.1", _double)], backend="nnsight", remote=True)
    import nnsight

    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None, raising=False)
    with pytest.raises(RemoteError, match="needs an NDIF API key"):
        llama_tiny.run(PROMPTS, [Steer("resid_pre.1", torch.ones(32))], backend="nnsight", remote=True)


@pytest.mark.slow
def test_nnsight_equals_hooks_on_smollm2(smollm: HookedModel) -> None:
    prompts = ["The capital of France is", "Hello"]
    ivs = [Steer("resid_pre.10", torch.ones(576), positions=-1), Ablate("head_z.20", heads=[3]),
           Cache(["resid_post.*", "head_z.20", "resid_mid.15"])]
    hooks, nns = smollm.run(prompts, ivs), smollm.run(prompts, ivs, backend="nnsight")
    torch.testing.assert_close(nns.logits, hooks.logits, atol=1e-4, rtol=0)
    for name in hooks.cache:
        torch.testing.assert_close(nns.cache[name], hooks.cache[name], atol=1e-4, rtol=0)
