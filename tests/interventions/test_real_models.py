"""The real-model battery: every embedded real model (SmolLM2-135M-Instruct, Gemma 3 270M) passes the same checks.

Factual recall (answer in the top-5), the no-op run equals HF, padding equivalence, lens decoding agrees with
the model at the last layer, and a steering vector moves the output in the direction it was built for.
"""

from __future__ import annotations

import pytest
import torch

from lmscope.interventions import Cache, HookedModel, Steer

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
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_equals_single(real_model: tuple[HookedModel, str, str], side: str) -> None:
    model, prompt, _ = real_model
    prompts = [prompt, "Hello", "One, two, three, four,"]
    batched = model.run(prompts, [Cache("resid_post.3")], padding_side=side)
    for i, p in enumerate(prompts):
        single = model.run(p, [Cache("resid_post.3")])
        keep = batched.batch.attention_mask[i].bool()
        # Gemma 3's logits and both models' massive residual dims reach ~1e3: float32 relative precision too
        torch.testing.assert_close(batched.logits[i][keep], single.logits[0], atol=2e-4, rtol=1e-5)
        torch.testing.assert_close(batched.cache.unpad("resid_post.3", i), single.cache["resid_post.3"][0],
                                   atol=2e-4, rtol=1e-5)  # both models have residual dims of size ~1e3


def test_logit_lens_last_reading_is_the_model(real_model: tuple[HookedModel, str, str]) -> None:
    from lmscope.lens import LogitLens

    model, prompt, answer = real_model
    traj = LogitLens(model).decode(prompt, targets=[answer], positions="last")
    logits = model.run(prompt).last_logits()[0]
    probs = logits.softmax(-1)
    assert traj.top_tokens[-1][0][0] == model.tokenizer.decode([int(logits.argmax())])
    assert abs(traj.top_probs[-1][0][0] - float(probs.max())) < 1e-4
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
