"""SteeringVector: construction methods, application under generate/KV cache and padding, persistence, errors."""

from __future__ import annotations

import pytest
import torch

from lmscope.interventions import HookedModel, ModelMismatchError, Steer
from lmscope.interventions.errors import InputError, SiteError
from lmscope.probes.steering import SteeringVector

POS = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12], [3, 3, 3], [20, 21, 22, 23]]
NEG = [[2, 2, 3, 9], [5, 7, 8], [8, 9, 1, 11, 13], [3, 4, 5], [20, 25, 22, 24]]


def _resid(model: HookedModel, prompt: list[int], site: str, token: int = -1) -> torch.Tensor:
    from lmscope.interventions import Cache

    return model.run([prompt], [Cache(site, positions=token)]).cache[site][0, 0].cpu()  # vectors live on the CPU


# -- construction ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["mean", "pca", "logistic"])
def test_identical_sets_give_zero_vector(llama_tiny: HookedModel, method: str) -> None:
    sv = SteeringVector.from_pairs(llama_tiny, POS, POS, method=method, batch_size=2)
    assert sv.layers == [0, 1, 2]
    for v in sv.vectors.values():
        assert torch.count_nonzero(v) == 0


def test_mean_of_one_pair_is_its_difference(llama_tiny: HookedModel) -> None:
    sv = SteeringVector.from_pairs(llama_tiny, POS[:1], NEG[:1], layers=[1, -1], method="mean")
    for layer in (1, 2):
        want = _resid(llama_tiny, POS[0], f"resid_pre.{layer}") - _resid(llama_tiny, NEG[0], f"resid_pre.{layer}")
        torch.testing.assert_close(sv[layer], want, rtol=1e-5, atol=1e-6)
    assert sv.n_pairs == 1 and sv.method == "mean" and sv.fingerprint == llama_tiny.fingerprint()


def test_mean_is_batch_size_independent_and_token_selectable(llama_tiny: HookedModel) -> None:
    a = SteeringVector.from_pairs(llama_tiny, POS, NEG, method="mean", batch_size=1, site="resid_post", token=0)
    b = SteeringVector.from_pairs(llama_tiny, POS, NEG, method="mean", batch_size=4, site="resid_post", token=0)
    for s in a.sites:
        assert s.startswith("resid_post.")
        torch.testing.assert_close(a.vectors[s], b.vectors[s], rtol=1e-5, atol=1e-6)
    want = torch.stack([_resid(llama_tiny, p, "resid_post.1", 0) - _resid(llama_tiny, n, "resid_post.1", 0)
                        for p, n in zip(POS, NEG)]).mean(0)
    torch.testing.assert_close(a[1], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["pca", "logistic"])
def test_direction_sign_positives_project_higher(llama_tiny: HookedModel, method: str) -> None:
    from lmscope.interventions.collect import collect_activations

    sv = SteeringVector.from_pairs(llama_tiny, POS, NEG, method=method, layers=[2])
    for swap in (False, True):
        p, n = (NEG, POS) if swap else (POS, NEG)
        sv = SteeringVector.from_pairs(llama_tiny, p, n, method=method, layers=[2])
        acts = collect_activations(llama_tiny, p + n, ["resid_pre.2"])["resid_pre.2"]
        proj = acts @ sv.direction(2)
        assert proj[:len(p)].mean() > proj[len(p):].mean()


def test_pca_recovers_planted_direction() -> None:
    from lmscope.probes.steering.methods import layer_vector

    torch.manual_seed(0)
    d = 16
    true = torch.zeros(d)
    true[3] = 1.0
    hn = torch.randn(40, d)
    hp = hn + (2.0 + 0.3 * torch.randn(40, 1)) * true + 0.05 * torch.randn(40, d)
    v = layer_vector("pca", hp, hn, 1.0)
    assert float(v / v.norm() @ true) > 0.99  # right direction and sign
    assert abs(float(v.norm()) - 2.0) < 0.2  # scaled by the mean difference's projection


def test_actadd_multi_position(llama_tiny: HookedModel) -> None:
    sv = SteeringVector.from_pairs(llama_tiny, [POS[0]], [NEG[1]], method="actadd", layers=[0])
    v = sv[0]
    assert v.shape == (4, llama_tiny.d_model)  # shorter prompt filled to the longer one's length
    steers = sv.to_steer(2.0)
    assert [s.positions for s in steers] == [0, 1, 2, 3]
    # a single-token actadd vector is the plain difference at that token
    one = SteeringVector.from_pairs(llama_tiny, [POS[0]], [NEG[0]], method="actadd", token=-1, layers=[1])
    torch.testing.assert_close(one[1], _resid(llama_tiny, POS[0], "resid_pre.1") -
                               _resid(llama_tiny, NEG[0], "resid_pre.1"), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="fixes its own positions"):
        sv.to_steer(1.0, positions="generated")


# -- application ---------------------------------------------------------------------------------------
def test_scale_zero_is_exactly_no_steering(llama_tiny: HookedModel) -> None:
    sv = SteeringVector.from_pairs(llama_tiny, POS, NEG, method="mean")
    base = llama_tiny.run(POS).logits
    steered = llama_tiny.run(POS, sv.to_steer(0.0)).logits
    assert torch.equal(base, steered)


def test_to_steer_layers_and_normalize(llama_tiny: HookedModel) -> None:
    sv = SteeringVector.from_pairs(llama_tiny, POS, NEG, method="mean")
    steers = sv.to_steer(3.0, positions="generated", normalize=True, layers=[-1])
    assert len(steers) == 1 and steers[0].site_spec == "resid_pre.2" and steers[0].positions == "generated"
    torch.testing.assert_close(steers[0].vector.norm(), torch.tensor(1.0))
    with pytest.raises(SiteError):
        sv.to_steer(1.0, layers=[7])


def _recompute(model: HookedModel, prompt: list[int], sv: SteeringVector, scale: float, spec, n: int) -> list[int]:
    """Greedy decoding with a full cache-free forward per step; positions translated to the growing sequence."""
    ids, p = list(prompt), len(prompt)
    for _ in range(n):
        if spec == "generated":
            pos = slice(p, None) if len(ids) > p else None
        elif spec == "prompt":
            pos = slice(0, p)
        elif isinstance(spec, int):
            pos = spec + p if spec < 0 else spec
        else:
            pos = spec
        ivs = [] if spec == "generated" and pos is None else sv.to_steer(scale, positions=pos if pos else "all")
        ids.append(int(model.run([ids], ivs).last_logits().argmax(-1)))
    return ids[p:]


@pytest.mark.parametrize("spec", ["all", "prompt", "generated", -1, [0, 2]])
def test_generate_with_kv_cache_equals_stepwise_recompute(llama_tiny: HookedModel, spec) -> None:
    torch.manual_seed(1)
    sv = SteeringVector({f"resid_pre.{i}": 3 * torch.randn(llama_tiny.d_model) for i in (1, 2)},
                        fingerprint=llama_tiny.fingerprint())
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    batched = llama_tiny.generate(prompts, 6, interventions=sv.to_steer(1.0, positions=spec))
    plain = llama_tiny.generate(prompts, 6)
    for i, p in enumerate(prompts):
        want = _recompute(llama_tiny, p, sv, 1.0, spec, 6)
        alone = llama_tiny.generate([p], 6, interventions=sv.to_steer(1.0, positions=spec))
        assert alone.new_tokens[0].tolist() == want  # KV cache == recompute
        assert batched.new_tokens[i].tolist() == want  # padded batch == unbatched
    assert not torch.equal(batched.new_tokens, plain.new_tokens)  # the steering did something


def test_kv_cache_all_architectures(tiny: HookedModel) -> None:
    torch.manual_seed(2)
    sv = SteeringVector({"resid_pre.1": 3 * torch.randn(tiny.d_model)})
    for spec in ("all", "generated"):
        g = tiny.generate([[5, 6, 7, 8]], 5, interventions=sv.to_steer(1.0, positions=spec))
        assert g.new_tokens[0].tolist() == _recompute(tiny, [5, 6, 7, 8], sv, 1.0, spec, 5)


def test_padded_batch_steers_only_real_tokens(llama_tiny: HookedModel) -> None:
    torch.manual_seed(3)
    sv = SteeringVector({"resid_pre.1": 3 * torch.randn(llama_tiny.d_model)})
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    for side in ("left", "right"):
        for spec in ("all", "prompt", -2):
            batch = llama_tiny.run(prompts, sv.to_steer(1.0, positions=spec), padding_side=side)
            last = batch.last_logits()
            for i, p in enumerate(prompts):
                alone = llama_tiny.run([p], sv.to_steer(1.0, positions=spec)).last_logits()[0]
                torch.testing.assert_close(last[i], alone, rtol=1e-4, atol=1e-5)


# -- persistence -----------------------------------------------------------------------------------------
def test_save_load_round_trip(llama_tiny: HookedModel, tmp_path) -> None:
    sv = SteeringVector.from_pairs(llama_tiny, POS, NEG, method="pca", layers=[0, 2], token=-2)
    sv.save(tmp_path / "sv")
    back = SteeringVector.load(tmp_path / "sv", model=llama_tiny)
    assert back.config() == sv.config()
    for s in sv.sites:
        assert torch.equal(back.vectors[s], sv.vectors[s])
    assert back.token == -2 and back.method == "pca" and back.n_pairs == len(POS)
    assert sorted(p.name for p in (tmp_path / "sv").iterdir()) == ["steering.json", "tensors.safetensors"]


def test_load_refuses_another_model(llama_tiny: HookedModel, tmp_path) -> None:
    from tiny_models import build_tiny

    sv = SteeringVector.from_pairs(llama_tiny, POS, NEG, layers=[0])
    sv.save(tmp_path / "sv")
    other = HookedModel(build_tiny("llama", seed=5))
    with pytest.raises(ModelMismatchError, match="steering vector"):
        SteeringVector.load(tmp_path / "sv", model=other)
    with pytest.raises(ModelMismatchError):
        SteeringVector.load(tmp_path / "sv", model=HookedModel(build_tiny("gpt2")))
    with pytest.raises(InputError, match="not an lmscope artifact"):
        SteeringVector.load(tmp_path / "nothing")


# -- bad input ----------------------------------------------------------------------------------------------
def test_errors(llama_tiny: HookedModel) -> None:
    m = llama_tiny
    with pytest.raises(InputError, match="paired prompts"):
        SteeringVector.from_pairs(m, POS, NEG[:3], method="mean")
    with pytest.raises(InputError, match="paired prompts"):
        SteeringVector.from_pairs(m, POS, NEG[:3], method="pca")
    SteeringVector.from_pairs(m, POS, NEG[:3], method="logistic")  # unpaired is fine for logistic
    with pytest.raises(InputError, match="empty"):
        SteeringVector.from_pairs(m, [], [])
    with pytest.raises(InputError, match="empty"):
        SteeringVector.from_pairs(m, POS, [], method="logistic")
    with pytest.raises(SiteError, match="out of range"):
        SteeringVector.from_pairs(m, POS, NEG, layers=[3])
    with pytest.raises(SiteError, match="out of range"):
        SteeringVector.from_pairs(m, POS, NEG, layers=-4)
    with pytest.raises(InputError, match="outside positive prompt 1"):
        SteeringVector.from_pairs(m, POS, NEG, token=3)
    with pytest.raises(InputError, match="outside negative prompt 1"):
        SteeringVector.from_pairs(m, [[1, 2, 3, 4, 5]] * 2, [[1, 2, 3, 4], [5, 7, 8]], token=-4)
    with pytest.raises(InputError, match="Unknown steering method"):
        SteeringVector.from_pairs(m, POS, NEG, method="magic")
    with pytest.raises(InputError, match="exactly one prompt pair"):
        SteeringVector.from_pairs(m, POS, NEG, method="actadd")
    with pytest.raises(InputError, match="at least two pairs"):
        SteeringVector.from_pairs(m, POS[:1], NEG[:1], method="pca")
    with pytest.raises(InputError, match="residual-width"):
        SteeringVector.from_pairs(m, POS, NEG, site="head_z")
    with pytest.raises(InputError, match="list of prompts"):
        SteeringVector.from_pairs(m, "a", "b")
    sv = SteeringVector({"resid_pre.0": torch.zeros(m.d_model)})
    with pytest.raises(InputError, match="zero"):
        sv.direction(0)
    with pytest.raises(InputError):
        Steer("resid_pre.0", torch.zeros(m.d_model), normalize=True)


# -- the real model -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sentiment_steering_moves_concept_tokens(smollm: HookedModel) -> None:
    from lmscope.probes.steering import load_pairs

    pos, neg = load_pairs()
    sv = SteeringVector.from_pairs(smollm, pos[:16], neg[:16], layers=[15, 16, 17], method="mean", batch_size=16)
    prompts = ["I went to the new restaurant last night. The food was", "The hotel we stayed at was"]
    good = [smollm.token_id(t) for t in (" great", " wonderful", " good", " excellent", " lovely")]
    bad = [smollm.token_id(t) for t in (" terrible", " awful", " bad", " horrible", " poor")]

    def margin(ivs) -> torch.Tensor:  # sentiment of the next word, renormalised over the two sets
        p = smollm.run(prompts, ivs).last_logits().softmax(-1)
        pg, pb = p[:, good].sum(-1), p[:, bad].sum(-1)
        return (pg - pb) / (pg + pb)

    base, up, down = margin([]), margin(sv.to_steer(8.0, normalize=True)), margin(sv.to_steer(-8.0, normalize=True))
    assert bool((up > base).all()) and bool((down < base).all()), (down, base, up)
    assert float((base - down).min()) > 0.1
