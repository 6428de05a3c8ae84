"""Direct logit attribution of one MLP's neurons: which neurons of layer ``L`` write the target's logit.

The MLP's output is ``Σ_n mlp_post[n] W_out[n] + b_out`` (``model.mlp_output_projection``), so with the final
norm linearised at this run's scale (as :func:`~lmscope.probes.attribution.attribute` does, readout vector ``u``)
neuron ``n`` contributes ``mlp_post[n] (W_out[n] · u)`` at the last token, and the bias ``b_out · u``. A post-MLP
norm (Gemma 2/3, OLMo-2: the table's ``mlp_post_norm``) is frozen at this run's scale on the projection's output
too, and the neurons' vectors pass through its linear part. The neuron terms and the bias term then sum exactly
to ``attribute(...).mlp[L]``, the whole MLP's term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions.cache import Cache
from lmscope.interventions.errors import InputError

from .dla import linearise_norm, tokens_label
from .request import token_of

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel


@dataclass
class NeuronAttribution:
    """Layer ``layer``'s neurons at the prompt's last token: ``dla [d_mlp]`` (each neuron's term in the target's
    logit, minus the contrast's), ``activation [d_mlp]`` (``mlp_post``), ``bias`` (the output bias's term,
    post-MLP norm bias included); ``total`` = the MLP's whole term."""

    layer: int
    target: int
    contrast: int | None
    dla: torch.Tensor
    activation: torch.Tensor
    bias: float
    labels: tuple[str, str | None]

    @property
    def total(self) -> float:
        return float(self.dla.sum()) + self.bias

    def top(self, k: int = 10, by: str = "dla") -> list[tuple[int, float, float]]:
        """The ``k`` neurons of largest ``|dla|`` (``by="dla"``) or ``|activation|`` (``by="activation"``):
        ``(neuron, dla, activation)``, largest first."""
        table = {"dla": self.dla, "activation": self.activation}
        if by not in table:
            raise InputError(f"by must be 'dla' or 'activation', got {by!r}.")
        order = table[by].abs().argsort(descending=True, stable=True)[: max(0, int(k))]
        return [(int(i), float(self.dla[i]), float(self.activation[i])) for i in order]

    def to_dict(self, k: int = 10) -> dict[str, Any]:
        def rows(by: str) -> list[dict[str, Any]]:
            return [{"neuron": n, "dla": d, "activation": a} for n, d, a in self.top(k, by)]
        return {"layer": self.layer, "target": self.target, "contrast": self.contrast, "labels": list(self.labels),
                "total": self.total, "bias": self.bias, "d_mlp": int(self.dla.shape[0]),
                "top_dla": rows("dla"), "top_activation": rows("activation")}


def neuron_attribution(model: HookedModel, prompt: Any, layer: int, target: str | int,
                       contrast: str | int | None = None) -> NeuronAttribution:
    """Each neuron's direct logit attribution at layer ``layer`` (negative from the end) for ``target``'s logit
    (minus ``contrast``'s) at the last token of one ``prompt``; see the module docstring. One forward."""
    if isinstance(prompt, (list, tuple)) and prompt and not isinstance(prompt[0], int):
        raise InputError("neuron_attribution takes one prompt (a string or one token-id list).")
    if "mlp_post" not in model.available_kinds:
        raise InputError("neuron_attribution reads mlp_post, which this model does not expose (a mixture of "
                         "experts has no single neuron activation).")
    L = model.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not -L <= layer < L:
        raise InputError(f"layer must be an int in {-L}..{L - 1}, got {layer!r}.")
    layer %= L
    t = token_of(model, target)
    c = None if contrast is None else token_of(model, contrast)
    res = model.run([prompt], [Cache([f"resid_post.{L - 1}", f"mlp_post.{layer}", f"mlp_out.{layer}"])])
    last = lambda s: res.cache[s][0, -1].float()  # noqa: E731
    W = model.unembed_weight.detach().float()
    d = W[t] - (W[c] if c is not None else 0)
    lin = linearise_norm(model.final_norm, last(f"resid_post.{L - 1}"))
    u = lin.readout(d) * (model.arch.logit_scale(model.hf_model.config) or 1.0)
    act = last(f"mlp_post.{layer}")
    w_out, b_out = model.mlp_output_projection(layer)
    w_out = w_out.detach().float()
    bias = b_out.detach().float() if b_out is not None else torch.zeros(model.d_model, device=w_out.device)
    post = model.arch.mlp_post_norm
    if post is None:
        dla, bias_term = act * (w_out @ u), float(bias @ u)
    else:  # sandwich norm: frozen at this run's projection output, the neurons' vectors pass its linear part
        frozen = linearise_norm(model.module(f"{model.arch.layers}.{layer}.{post}"), act @ w_out + bias)
        dla = frozen.linear(act[:, None] * w_out) @ u
        bias_term = float((frozen.linear(bias) + frozen.bias) @ u)
    labels = (tokens_label(model, t), None if c is None else tokens_label(model, c))
    return NeuronAttribution(layer, t, c, dla.cpu(), act.cpu(), bias_term, labels)
