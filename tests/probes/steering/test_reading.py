"""RepE reading: projections per layer and per-layer separation of held-out positives from negatives."""

from __future__ import annotations

import pytest
import torch

from lmscope.interventions import HookedModel
from lmscope.interventions.collect import collect_activations
from lmscope.interventions.errors import InputError, SiteError
from lmscope.probes.steering import SteeringVector, auroc, read, separation

POS = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12], [3, 3, 3], [20, 21, 22, 23]]
NEG = [[2, 2, 3, 9], [5, 7, 8], [8, 9, 1, 11, 13], [3, 4, 5], [20, 25, 22, 24]]


def test_read_is_projection_on_unit_direction(llama_tiny: HookedModel) -> None:
    sv = SteeringVector.from_pairs(llama_tiny, POS, NEG, method="mean", layers=[1, 2])
    scores = read(llama_tiny, POS, sv)
    assert scores.shape == (len(POS), 2)
    acts = collect_activations(llama_tiny, POS, ["resid_pre.2"])["resid_pre.2"]
    torch.testing.assert_close(scores[:, 1], acts @ (sv[2] / sv[2].norm()), rtol=1e-5, atol=1e-5)
    assert read(llama_tiny, POS, sv, layers=2).shape == (len(POS), 1)


def test_auroc_known_values() -> None:
    assert auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    with pytest.raises(InputError):
        auroc(torch.tensor([]), torch.tensor([1.0]))


def test_separation_on_training_pairs(llama_tiny: HookedModel) -> None:
    sv = SteeringVector.from_pairs(llama_tiny, POS, NEG, method="pca", layers=[1, 2])
    sep = separation(llama_tiny, POS, NEG, sv)
    assert sep.layers == [1, 2] and len(sep.auroc) == 2 and sep.pair_accuracy is not None
    assert sep.best_layer in (1, 2)
    assert max(sep.auroc) > 0.5  # pca sign: positives project higher on the data it was built from
    assert "auroc" in sep.to_markdown()
    with pytest.raises(InputError):
        separation(llama_tiny, [], NEG, sv)


@pytest.mark.slow
def test_separation_held_out_on_smollm(smollm: HookedModel) -> None:
    from lmscope.probes.steering import load_pairs

    pos, neg = load_pairs()
    sv = SteeringVector.from_pairs(smollm, pos[:20], neg[:20], method="pca", layers=[8, 16], batch_size=20)
    sep = separation(smollm, pos[24:], neg[24:], sv)
    assert max(sep.auroc) >= 0.9, sep.table()


def test_sites_of_accepts_every_layer_spec() -> None:
    sv = SteeringVector({"resid_pre.1": torch.ones(4), "resid_pre.2": torch.ones(4)})
    assert sv.sites_of(None) == sv.sites_of("all") == ["resid_pre.1", "resid_pre.2"]
    assert sv.sites_of(2) == sv.sites_of("resid_pre.2") == sv.sites_of([2]) == ["resid_pre.2"]
    assert sv.sites_of([2, 1]) == ["resid_pre.2", "resid_pre.1"]
    with pytest.raises(SiteError, match="covers layers"):
        sv.sites_of([3])
