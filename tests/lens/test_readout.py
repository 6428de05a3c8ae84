"""LensReadout: lens predictions recorded inside intervention sessions, composing with Steer."""

from __future__ import annotations

import pytest
import torch

from lmscope.interventions import HookedModel, InputError, Intervention, Steer
from lmscope.lens import LensReadout, LogitLens, TunedLens

IDS = [[5, 9, 13, 2, 40, 7], [3, 1, 4, 1, 5, 9]]


def test_readout_matches_decode(llama_tiny: HookedModel) -> None:
    lens = LogitLens(llama_tiny, sites="all")
    ro = LensReadout(lens, top_k=3)
    llama_tiny.run(IDS, [ro])
    assert ro.readings == lens.readings
    traj = lens.decode(IDS[0], top_k=3)
    for r, name in enumerate(lens.readings):
        assert torch.equal(ro[name]["top_ids"][0], traj.top_ids[r])
    assert ro.stack("top_probs").shape == (6, 2, 6, 3) and ro.mask.all()


def test_steer_changes_later_readings_only(llama_tiny: HookedModel) -> None:
    lens = LogitLens(llama_tiny, sites="all")
    base = LensReadout(lens, positions=-1, log_probs=True)
    llama_tiny.run(IDS, [base])
    steered = LensReadout(lens, positions=-1, log_probs=True)
    vec = torch.randn(llama_tiny.d_model, generator=torch.Generator().manual_seed(0)) * 5
    llama_tiny.run(IDS, [Steer("resid_post.1", vec), steered])
    for name in lens.readings:
        same = torch.equal(base[name]["log_probs"], steered[name]["log_probs"])
        earlier = name in ("resid_mid.0", "resid_post.0", "resid_mid.1")
        assert same == earlier, name
    assert base["resid_post.2"]["log_probs"].shape == (2, 1, 97)


def test_readout_during_generation(llama_tiny: HookedModel) -> None:
    ro = LensReadout(LogitLens(llama_tiny), top_k=1)
    g = llama_tiny.generate([IDS[0]], max_new_tokens=3, interventions=[ro])
    top = ro["resid_post.-1"]["top_ids"]  # prompt pass + 2 single-token steps
    assert top.shape == (1, 6 + 2, 1)
    assert torch.equal(top[0, 5:, 0], g.new_tokens[0])


def test_serialisation_by_reference(llama_tiny: HookedModel, tmp_path) -> None:
    ro = LensReadout(LogitLens(llama_tiny, sites="all"), positions=-1, top_k=2)
    ro.save(tmp_path / "ro")
    back = Intervention.load(tmp_path / "ro")
    assert isinstance(back, LensReadout) and back == ro
    llama_tiny.run(IDS, [back])
    assert back.readings[0] == "resid_mid.0" and back["resid_post.2"]["top_ids"].shape == (2, 1, 2)

    tuned = TunedLens(llama_tiny)
    with pytest.raises(InputError, match="save the lens"):
        LensReadout(tuned).save(tmp_path / "x")
    tuned.save(tmp_path / "lens")
    LensReadout(tuned).save(tmp_path / "ro2")
    back2 = Intervention.load(tmp_path / "ro2")
    llama_tiny.run(IDS, [back2])
    assert isinstance(back2.lens, TunedLens) and len(back2.readings) == 3


def test_readout_rejects_other_model(llama_tiny: HookedModel) -> None:
    other = HookedModel(llama_tiny.hf_model)
    with pytest.raises(InputError, match="another HookedModel"):
        other.run(IDS, [LensReadout(LogitLens(llama_tiny))])
