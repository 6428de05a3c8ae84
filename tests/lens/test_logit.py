"""Logit lens: exactness against the model's own logits, readings, decode trajectories, bf16."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import build_tiny, random_ids

from lmscope.interventions import Cache, HookedModel, InputError
from lmscope.interventions.tolerance import assert_close
from lmscope.lens import LogitLens, Trajectory, TrajectoryBatch, TunedLens


def _ids(n: int = 7, seed: int = 0) -> torch.Tensor:
    return random_ids((2, n), seed)


def test_last_reading_equals_model_logits(tiny: HookedModel) -> None:
    lens = LogitLens(tiny)
    r = tiny.run(_ids(), [Cache("resid_post.*")])
    assert len(lens.readings) == tiny.n_layers
    torch.testing.assert_close(lens.logits(r.cache["resid_post.-1"], -1), r.logits, atol=1e-5, rtol=0)
    all_logits = lens.forward_all(r.cache)
    assert len(all_logits) == tiny.n_layers and all_logits[0].shape == r.logits.shape


def test_mid_readings_in_depth_order(llama_tiny: HookedModel) -> None:
    lens = LogitLens(llama_tiny, sites=("resid_post", "resid_mid"))
    assert lens.readings == [f"{k}.{i}" for i in range(3) for k in ("resid_mid", "resid_post")]
    neox = HookedModel(build_tiny("gpt_neox"))  # parallel residual: no resid_mid
    assert LogitLens(neox, sites="all").readings == ["resid_post.0", "resid_post.1", "resid_post.2"]
    with pytest.warns(UserWarning, match="resid_mid"):
        LogitLens(neox, sites=("resid_post", "resid_mid"))
    with pytest.raises(InputError):
        LogitLens(llama_tiny, sites="attn_out")


def test_decode_batch_matches_single_prompts(llama_tiny: HookedModel) -> None:
    lens = LogitLens(llama_tiny, sites="all")
    prompts = [[5, 9, 13, 2, 40], [7, 3, 11]]
    batch = lens.decode(prompts, top_k=3, targets=[9, 11])
    assert isinstance(batch, TrajectoryBatch) and len(batch) == 2
    for p, traj in zip(prompts, batch):
        one = lens.decode(p, top_k=3, targets=[9, 11])
        assert isinstance(one, Trajectory) and one.shape == (6, len(p)) and one.positions == list(range(len(p)))
        assert torch.equal(one.top_ids, traj.top_ids)
        torch.testing.assert_close(one.top_probs, traj.top_probs, atol=1e-5, rtol=0)
    t = batch[0]
    assert t.kl[-1].abs().max() < 1e-4  # last reading = the model's own output
    assert torch.equal(t.top_ids[-1], t.final_top_ids)
    assert (t.kl >= 0).all() and (t.entropy >= 0).all()
    # rank/prob of a target agree with the top-k lists
    top1_is_target = t.top_ids[:, :, 0] == 9
    assert torch.equal(top1_is_target, t.target_rank[:, :, 0] == 1)
    assert torch.allclose(t.target_prob[:, :, 0][top1_is_target], t.top_probs[:, :, 0][top1_is_target])
    data = json.loads(batch.to_json())
    assert len(data["trajectories"]) == 2
    back = Trajectory.from_dict(json.loads(t.to_json()))
    assert torch.equal(back.top_ids, t.top_ids) and back.readings == t.readings
    assert "resid_mid.0" in t.table()


def test_decode_positions_layers_and_errors(llama_tiny: HookedModel) -> None:
    lens = LogitLens(llama_tiny)
    full = lens.decode([4, 8, 15, 16, 23], top_k=2)
    last = lens.decode([4, 8, 15, 16, 23], top_k=2, positions="last", layers=[0, -1])
    assert last.readings == ["resid_post.0", "resid_post.2"] and last.positions == [4]
    assert torch.equal(last.top_ids[:, 0], full.top_ids[[0, 2], 4])
    with pytest.raises(InputError, match="out of range"):
        lens.decode([4, 8], layers=[3])
    with pytest.raises(InputError, match=r"Layer 9 is out of range .*this model has 3 layers \(0\.\.2 or -3\.\.-1\)"):
        lens.decode([4, 8], layers=list(range(1, 10)))  # `--layers 1-9`: the bound typed, not layer 3
    with pytest.raises(InputError):
        lens.decode([4, 8], positions=[5])
    with pytest.raises(InputError):
        lens.decode([4, 8], targets=[500])
    with pytest.raises(InputError):
        lens.decode([4, 8], top_k=0)
    with pytest.raises(InputError):
        lens.decode("", top_k=2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_model_decodes(dtype: torch.dtype) -> None:
    """In low precision the last logit-lens reading is the model's own output, and a zero tuned lens (float32
    parameters) reads what the logit lens reads."""
    model = HookedModel(build_tiny("llama", dtype=dtype))
    prompt = [3, 1, 4, 1, 5]
    logit, tuned = LogitLens(model).decode(prompt, top_k=3), TunedLens(model).decode(prompt, top_k=3)
    probs = model.run([prompt]).logits[0].float().softmax(-1).cpu()  # the model's own output distribution
    assert torch.equal(logit.top_ids[-1], logit.final_top_ids)
    # values, not ids: low-precision logits can tie, and ties may be ordered either way
    assert_close(logit.top_probs[-1], probs.topk(3).values, dtype)  # norm-wise, on the largest probability
    assert_close(probs.gather(-1, logit.top_ids[-1]), logit.top_probs[-1], dtype)
    assert_close(logit.kl[-1], torch.zeros_like(logit.kl[-1]), dtype)
    assert torch.equal(tuned.top_ids, logit.top_ids)
    assert_close(tuned.top_probs, logit.top_probs, dtype)
    assert TunedLens(model).weight.dtype == torch.float32


@pytest.mark.slow
def test_smollm_paris(smollm: HookedModel) -> None:
    t = LogitLens(smollm).decode("The capital of France is", positions="last", layers=[-1], targets=[" Paris"])
    assert t.top_tokens[-1][0][0] == " Paris"
    assert t.target_rank[-1, 0, 0] == 1
