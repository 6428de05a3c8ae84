"""Direct logit attribution over a dataset of prompts: every prompt's terms, and their mean ± standard error.

:func:`~lmscope.probes.attribution.attribute` on a list of prompts runs them as one padded batch and returns a
:class:`DatasetAttribution`: ``per_prompt`` holds one :class:`~lmscope.probes.attribution.Attribution` per prompt
(equal, up to float rounding, to ``attribute`` on that prompt alone: padding changes nothing), and every term is
also given as its mean over prompts with the standard error of that mean (sample standard deviation / sqrt(n)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions.errors import InputError

if TYPE_CHECKING:
    from .dla import Attribution

#: The per-prompt fields of an :class:`Attribution` that a dataset averages (scalars and per-layer tensors).
FIELDS = ("logit", "embed", "attn", "attn_bias", "heads", "mlp", "constant")


def term_table(embed: float, attn: torch.Tensor, attn_bias: torch.Tensor, heads: torch.Tensor, mlp: torch.Tensor,
               constant: float, split: torch.Tensor | None = None) -> dict[str, float]:
    """Every finest-grained term by name: ``embed``, per layer the heads ``L{l}H{h}`` and ``attn_bias.{l}`` where the
    heads are split (else the whole block ``attn.{l}``) and ``mlp.{l}``, then ``constant``. ``split`` ``[layers]``:
    which layers are split (default: those whose ``heads`` have no NaN), so a table of errors can take its values'
    names."""
    out = {"embed": float(embed)}
    if split is None:
        split = ~torch.isnan(heads).any(1)
    for layer in range(mlp.shape[0]):
        if not split[layer]:
            out[f"attn.{layer}"] = float(attn[layer])
        else:
            out.update({f"L{layer}H{h}": float(v) for h, v in enumerate(heads[layer])})
            out[f"attn_bias.{layer}"] = float(attn_bias[layer])
        out[f"mlp.{layer}"] = float(mlp[layer])
    out["constant"] = float(constant)
    return out


@dataclass
class DatasetAttribution:
    """DLA of many prompts (see the module docstring). ``heads``, ``mlp``, ``attn``, ``attn_bias``, ``embed``,
    ``constant`` and ``logit`` are means over prompts (a layer's heads are NaN where any prompt left them NaN);
    :meth:`stderr` gives the standard error of any of them, :meth:`stack` the ``[prompts, ...]`` values."""

    per_prompt: list[Attribution]
    notes: list[str] = field(default_factory=list)

    @property
    def n_prompts(self) -> int:
        return len(self.per_prompt)

    def stack(self, name: str) -> torch.Tensor:
        """``[prompts, ...]``: field ``name`` (one of :data:`FIELDS`) of every prompt."""
        if name not in FIELDS:
            raise InputError(f"name must be one of {', '.join(FIELDS)}, got {name!r}.")
        return torch.stack([torch.as_tensor(getattr(a, name), dtype=torch.float32) for a in self.per_prompt])

    def mean(self, name: str) -> torch.Tensor:
        """The mean of field ``name`` over prompts."""
        return self.stack(name).mean(0)

    def stderr(self, name: str) -> torch.Tensor:
        """The standard error of :meth:`mean` (sample standard deviation / sqrt(n); NaN for one prompt)."""
        values = self.stack(name)
        if values.shape[0] < 2:
            return torch.full_like(values[0], float("nan"))
        return values.std(0, unbiased=True) / values.shape[0] ** 0.5

    logit = property(lambda self: float(self.mean("logit")))
    embed = property(lambda self: float(self.mean("embed")))
    constant = property(lambda self: float(self.mean("constant")))
    attn = property(lambda self: self.mean("attn"))
    attn_bias = property(lambda self: self.mean("attn_bias"))
    heads = property(lambda self: self.mean("heads"))
    mlp = property(lambda self: self.mean("mlp"))

    @property
    def total(self) -> float:
        """Sum of the mean block terms: equals the mean :attr:`logit` (up to float rounding)."""
        return float(self.embed + self.attn.sum() + self.mlp.sum() + self.constant)

    @property
    def labels(self) -> tuple[str, str | None]:
        """The target (and contrast) label when every prompt shares them, else ``("per-prompt targets", ...)``."""
        labels = {a.labels for a in self.per_prompt}
        return labels.pop() if len(labels) == 1 else ("per-prompt targets", None)

    def terms(self) -> dict[str, float]:
        """Every finest-grained term's mean over prompts, by name (as :meth:`Attribution.terms`)."""
        return term_table(self.embed, self.attn, self.attn_bias, self.heads, self.mlp, self.constant)

    def terms_stderr(self) -> dict[str, float]:
        """The standard error of each of :meth:`terms`, by the same names."""
        err = {k: self.stderr(k) for k in FIELDS}  # NaN for one prompt: named as the means are, not as NaN heads
        return term_table(float(err["embed"]), err["attn"], err["attn_bias"], err["heads"], err["mlp"],
                          float(err["constant"]), split=~torch.isnan(self.heads).any(1))

    def top(self, k: int = 10) -> list[tuple[str, float, float]]:
        """The ``k`` terms of largest mean magnitude as ``(name, mean, stderr)``, largest first."""
        err = self.terms_stderr()
        ranked = sorted(self.terms().items(), key=lambda kv: -abs(kv[1]))[:k]
        return [(name, value, err[name]) for name, value in ranked]

    def heatmap(self, path: Any = None, title: str | None = None) -> Any:
        """The layer × head map of the mean terms (as :meth:`Attribution.heatmap`)."""
        from .plot import plot_attribution

        target = repr(self.labels[0]) + (f" − {self.labels[1]!r}" if self.labels[1] is not None else "")
        return plot_attribution(self, path, title or f"mean DLA of {target} over {self.n_prompts} prompts: logit "
                                                     f"{self.logit:.2f} ± {float(self.stderr('logit')):.2f}")
