"""The real-model battery: every embedded real model (SmolLM2-135M-Instruct, Gemma 3 270M) passes the same checks,
loaded in float32 and in bfloat16.

Factual recall (answer in the top-5), the no-op run equals HF, padding equivalence, lens decoding agrees with
the model at the last layer, a steering vector moves the output in the direction it was built for, and direct
logit attribution's terms sum to the logit. Equivalences hold within the model dtype's rounding
(:mod:`lmscope.interventions.tolerance`).
"""

from __future__ import annotations

import pytest
import torch

from lmscope.interventions import Cache, HookedModel, Steer
from lmscope.interventions.tolerance import assert_close

pytestmark = pytest.mark.slow


def test_factual_answer_in_top5(real_model: tuple[HookedModel, str, str]) -> None:
    model, prompt, answer = real_model
    top5 = model.run(prompt).last_logits()[0].topk(5).indices.tolist()
    assert model.token_id(answer) in top5, [model.tokenizer.decode([t]) for t in top5]


def test_noop_hooks_equal_hf(real_model: tuple[HookedModel, str, str]) -> None:
    model, prompt, _ = real_model
    batch = model.tokenize(prompt)
    with torch.no_grad():
        ref = model.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    got = model.run(prompt, [Cache("resid_post.*"), Cache("head_z.0")]).logits
    assert got.dtype == model.dtype
    assert_close(got, ref, model.dtype, n_ops=1)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_equals_single(real_model: tuple[HookedModel, str, str], side: str) -> None:
    model, prompt, _ = real_model
    prompts = [prompt, "Hello", "One, two, three, four,"]
    batched = model.run(prompts, [Cache("resid_post.3")], padding_side=side)
    # batched and single runs use differently shaped kernels, so they may round differently (bfloat16, measured:
    # under one rounding of the largest logit; float32: accumulation order only)
    for i, p in enumerate(prompts):
        single = model.run(p, [Cache("resid_post.3")])
        keep = batched.batch.attention_mask[i].bool()
        # norm-wise: Gemma 3's logits and both models' massive residual dims (~1e3) set the scale
        assert_close(batched.logits[i][keep], single.logits[0], model.dtype, msg="logits")
        assert_close(batched.cache.unpad("resid_post.3", i), single.cache["resid_post.3"][0], model.dtype,
                     msg="resid_post.3")


def test_logit_lens_last_reading_is_the_model(real_model: tuple[HookedModel, str, str]) -> None:
    from lmscope.lens import LogitLens

    model, prompt, answer = real_model
    traj = LogitLens(model).decode(prompt, targets=[answer], positions="last")
    logits = model.run(prompt).last_logits()[0].float()
    probs = logits.softmax(-1)
    assert traj.top_tokens[-1][0][0] == model.tokenizer.decode([int(logits.argmax())])
    assert_close(traj.top_probs[-1][0][0], float(probs.max()), model.dtype, n_ops=1, scale=1.0)
    assert traj.target_rank[-1][0][0] <= 5


def test_steering_moves_sentiment(real_model: tuple[HookedModel, str, str]) -> None:
    """A mean-difference vector from the shipped sentiment pairs raises ' good' over ' bad' monotonically."""
    from lmscope.probes.steering import SteeringVector, load_pairs

    model = real_model[0]
    pos, neg = load_pairs()
    layer = model.n_layers // 2
    sv = SteeringVector.from_pairs(model, pos[:12], neg[:12], layers=[layer], method="mean")
    good, bad = model.token_id(" good"), model.token_id(" bad")
    prompt = "I watched the film yesterday. Honestly, it was"

    def diff(scale: float) -> float:
        steers = sv.to_steer(scale, normalize=True) if scale else [Steer(f"resid_pre.{layer}",
                                                                           torch.zeros(model.d_model))]
        logp = model.run(prompt, steers).last_logits()[0].log_softmax(-1)
        return float(logp[good] - logp[bad])

    norm = float(sv.norms[sv.sites[0]])
    lo, mid, hi = diff(-norm), diff(0.0), diff(norm)
    assert lo < mid < hi, (lo, mid, hi)


def test_dla_terms_sum_to_the_logit(real_model: tuple[HookedModel, str, str]) -> None:
    """Direct logit attribution linearises the final norm in the model's dtype, and its terms add up to the logit
    within that dtype's rounding (float32: exactly, up to accumulation order)."""
    from lmscope.probes.attribution import attribute

    model, prompt, answer = real_model
    a = attribute(model, prompt, answer)
    assert a.norm == ("rmsnorm(1+w)" if model.arch.name.startswith("gemma") else "rmsnorm")
    magnitude = float(abs(a.embed) + a.attn.abs().sum() + a.mlp.abs().sum() + abs(a.constant))
    # the model's logit rounds the residual after every sublayer; those roundings mostly cancel (bfloat16, measured:
    # ~0.2 eps of the terms' magnitude on both models), so a few roundings' allowance is enough
    assert_close(a.total, a.logit, model.dtype, scale=magnitude, msg="block terms vs the logit")
    assert_close(sum(a.terms().values()), a.logit, model.dtype, scale=magnitude, msg="finest terms")
    assert not torch.isnan(a.heads).any()
    assert_close(a.heads.sum(1) + a.attn_bias, a.attn, model.dtype, scale=float(a.attn.abs().max()))
    assert a.head_positions is not None
    assert_close(a.head_positions.sum(-1), a.heads, model.dtype, scale=float(a.heads.abs().max()))
