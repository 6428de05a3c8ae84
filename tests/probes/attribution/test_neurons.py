"""Neuron-level DLA: the neurons' terms and the bias sum to the whole MLP's DLA term on every architecture."""

from __future__ import annotations

import pytest
import torch
from tiny_models import skip_lazy_miscompute

from lmscope.interventions import Cache, HookedModel
from lmscope.interventions.errors import InputError
from lmscope.probes.attribution import attribute, neuron_attribution

PROMPT = [3, 17, 42, 8, 55, 21]


def test_neuron_terms_sum_to_the_mlp_term_on_every_architecture(tiny: HookedModel) -> None:
    skip_lazy_miscompute(tiny, "DLA")
    if "mlp_post" not in tiny.available_kinds:
        with pytest.raises(InputError, match="mixture of experts"):
            neuron_attribution(tiny, PROMPT, 0, 11)
        return
    whole = attribute(tiny, PROMPT, 11, contrast=30, per_position=False)
    for layer in range(tiny.n_layers):
        n = neuron_attribution(tiny, PROMPT, layer, 11, contrast=30)
        assert n.dla.shape == (tiny.d_mlp,) and n.activation.shape == (tiny.d_mlp,)
        assert n.total == pytest.approx(float(whole.mlp[layer]), abs=1e-4 * max(1.0, abs(float(whole.mlp[layer]))))
    act = tiny.run([PROMPT], [Cache("mlp_post.-1")]).cache["mlp_post.-1"][0, -1].float().cpu()
    torch.testing.assert_close(neuron_attribution(tiny, PROMPT, -1, 11).activation, act)


def test_top_orders_by_magnitude(llama_tiny: HookedModel) -> None:
    n = neuron_attribution(llama_tiny, PROMPT, 1, 11)
    top = n.top(5)
    assert [abs(d) for _, d, _ in top] == sorted((abs(d) for _, d, _ in top), reverse=True)
    assert abs(top[0][1]) == float(n.dla.abs().max())
    by_act = n.top(3, by="activation")
    assert abs(by_act[0][2]) == float(n.activation.abs().max())
    d = n.to_dict(k=4)
    assert len(d["top_dla"]) == 4 and d["d_mlp"] == llama_tiny.d_mlp and d["total"] == pytest.approx(n.total)


@pytest.mark.parametrize("kw, message", [
    ({"layer": 3}, "layer must be an int in -3..2"),
    ({"layer": True}, "layer must be an int"),
    ({"target": 500}, "outside the vocabulary"),
    ({"prompt": [PROMPT, PROMPT]}, "takes one prompt"),
])
def test_bad_arguments(llama_tiny: HookedModel, kw: dict, message: str) -> None:
    args = {"prompt": PROMPT, "layer": 0, "target": 11, **kw}
    with pytest.raises(InputError, match=message):
        neuron_attribution(llama_tiny, **args)
    with pytest.raises(InputError, match="by must be"):
        neuron_attribution(llama_tiny, PROMPT, 0, 11).top(3, by="size")
