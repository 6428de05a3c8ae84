"""Trajectory decoding: core position specs, batched == one prompt at a time, metrics == textbook formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmscope.interventions import Cache, HookedModel, InputError
from lmscope.interventions.positions import prompt_indices
from lmscope.lens import LogitLens, TunedLens

PROMPTS = [[4, 8, 15, 16, 23], [42, 7, 9]]


def test_prompt_indices() -> None:
    assert prompt_indices(None, [3, 2]) == [[0, 1, 2], [0, 1]] == prompt_indices("all", [3, 2])
    assert prompt_indices(-1, [3, 2]) == [[2], [1]]
    assert prompt_indices(slice(1, None), [3, 2]) == [[1, 2], [1]]
    assert prompt_indices([[0, -1], [1]], [3, 2]) == [[0, 2], [1]]
    with pytest.raises(InputError, match="outside prompt 1, which has 2 tokens"):
        prompt_indices(2, [3, 2])
    with pytest.raises(InputError, match="2 entries but there are 3 prompts"):
        prompt_indices([[0], [1]], [3, 2, 2])
    with pytest.raises(InputError, match="selects no prompt token"):
        prompt_indices("generated", [3])
    with pytest.raises(InputError, match="has step 0"):  # found by the property test: was a raw ValueError
        prompt_indices(slice(None, None, 0), [3])
    with pytest.raises(InputError, match="must be ints or None"):
        prompt_indices([slice(0.5, 2)], [3])


def test_step_zero_slice_is_refused_when_the_intervention_is_built() -> None:
    from lmscope.interventions import Steer

    with pytest.raises(InputError, match="has step 0"):
        Steer("resid_post.0", torch.ones(4), positions=slice(None, None, 0))
    with pytest.raises(InputError, match="has step 0"):
        Steer("resid_post.0", torch.ones(4), positions=[1, slice(0, 2, 0)])


@torch.no_grad()
def test_batched_positions_equal_one_prompt_at_a_time(llama_tiny: HookedModel) -> None:
    torch.manual_seed(0)
    lens = TunedLens(llama_tiny, sites="all")
    lens.weight.normal_(0, 0.1)
    batch = lens.decode(PROMPTS, top_k=3, targets=[9], positions=[[0, -1], slice(1, 3)])
    assert batch[0].positions == [0, 4] and batch[1].positions == [1, 2]
    for traj, prompt in zip(batch, PROMPTS):
        alone = lens.decode(prompt, top_k=3, targets=[9])  # every position, no padding
        cols = traj.positions
        assert torch.equal(traj.top_ids, alone.top_ids[:, cols])
        for name in ("top_probs", "kl", "entropy", "target_prob"):
            torch.testing.assert_close(getattr(traj, name), getattr(alone, name)[:, cols], rtol=1e-4, atol=1e-5)
        assert torch.equal(traj.target_rank, alone.target_rank[:, cols])
    with pytest.raises(InputError, match="'all', 'last'"):
        lens.decode(PROMPTS, positions="first")


@torch.no_grad()
def test_kl_entropy_equal_reference(llama_tiny: HookedModel) -> None:
    lens = LogitLens(llama_tiny, sites="all")
    traj = lens.decode(PROMPTS[0], top_k=2)
    cache = Cache(lens.readings)
    out = llama_tiny.run([PROMPTS[0]], [cache])
    logp = F.log_softmax(out.logits[0].float(), -1)
    for i, r in enumerate(lens.readings):
        logq = F.log_softmax(lens.logits(cache.cache[r][0], i).float(), -1)
        kl = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)
        ent = torch.distributions.Categorical(logits=logq).entropy()
        # trajectories keep their numbers on the CPU; the reference is computed on the model's device
        torch.testing.assert_close(traj.kl[i], kl.clamp_min(0), rtol=1e-4, atol=1e-5, check_device=False)
        torch.testing.assert_close(traj.entropy[i], ent, rtol=1e-4, atol=1e-5, check_device=False)
