"""Steering vectors: directions in the residual stream built from contrast pairs, and how to apply them.

A :class:`SteeringVector` holds one vector per layer (site name -> ``[d_model]``
tensor, or ``[k, d_model]`` for multi-position ActAdd) plus where it came from
(method, model fingerprint, number of pairs). It is built by
:meth:`SteeringVector.from_pairs` with one of four methods (computed in :mod:`.methods`):

- ``actadd`` (Turner et al.): one prompt pair; the difference of ``resid_pre`` at
  the first positions (the shorter prompt is right-filled with a space token so
  both have the same length), added at the first positions of a new prompt;
- ``mean`` (CAA, Rimsky et al.): mean over pairs of ``h_pos - h_neg`` at one token
  (default the last);
- ``pca`` (RepE, Zou et al.): first principal component of the paired differences,
  mean-centred after flipping every other pair (RepE shuffles pair order so the
  differences are not all on one side), sign chosen so positives project higher;
- ``logistic``: the weight direction of a scikit-learn logistic regression
  separating positive from negative activations.

``pca`` and ``logistic`` give a direction; it is stored scaled by the mean
difference's projection on it, so every method's vectors have comparable norms.
:meth:`SteeringVector.to_steer` turns the vector into ``Steer`` interventions for
``model.run`` / ``model.apply`` / ``model.generate``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions.artifacts import load_artifact, save_artifact
from lmscope.interventions.collect import OUTLIER_FACTOR, TokenSpec
from lmscope.interventions.errors import InputError, SiteError
from lmscope.interventions.fingerprint import check_fingerprint
from lmscope.interventions.positions import PositionSpec
from lmscope.interventions.specs import LayerSpec, Prompts, as_prompt_list, resolve_layers
from lmscope.interventions.steer import Steer

from .methods import check_contrast, contrast_vectors
from .scale import check_unit, typical_norms

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

CONFIG_NAME = "steering.json"
FORMAT_VERSION = 1



@dataclass
class SteeringVector:
    """Per-layer steering vectors plus their provenance.

    ``vectors`` maps site names (``"resid_pre.12"``) to ``[d_model]`` tensors
    (``[k, d_model]`` for multi-position ActAdd: row ``i`` belongs at prompt token
    ``i``). ``fingerprint`` is the model's :meth:`HookedModel.fingerprint` (None
    for hand-made vectors: then nothing is checked on load).
    """

    vectors: dict[str, torch.Tensor]
    method: str = "custom"
    site_kind: str = "resid_pre"
    fingerprint: dict[str, Any] | None = None
    n_pairs: int = 0
    token: int | str | None = -1
    metadata: dict[str, Any] = field(default_factory=dict)
    #: site -> typical residual norm there (outlier tokens left out), measured on the pairs; the unit of
    #: ``to_steer(..., unit="resid")``. Empty for hand-made vectors until :meth:`measure_resid_norms`.
    resid_norms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise InputError("A SteeringVector needs at least one layer's vector.")
        clean: dict[str, torch.Tensor] = {}
        for name, v in self.vectors.items():
            v = torch.as_tensor(v).detach().float().cpu()
            if v.dim() not in (1, 2) or v.numel() == 0:
                raise InputError(f"Vector for {name} must be [d_model] (or [k, d_model] for ActAdd), "
                                 f"got shape {tuple(v.shape)}.")
            bad = int((~torch.isfinite(v)).sum())
            if bad:
                raise InputError(f"Vector for {name} has {bad} NaN or infinite entries; steering with it would "
                                 "make every logit NaN. Rebuild it from finite activations.")
            clean[name] = v
        self.vectors = dict(sorted(clean.items(), key=lambda kv: _layer_of(kv[0])))
        bad_norms = {s: n for s, n in self.resid_norms.items() if not (isinstance(n, (int, float)) and n > 0)}
        if bad_norms:
            raise InputError(f"resid_norms must be positive numbers, got {bad_norms}.")
        self.resid_norms = {s: float(n) for s, n in self.resid_norms.items() if s in self.vectors}

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_pairs(cls, model: HookedModel, positive: Prompts, negative: Prompts, layers: LayerSpec = None,
                   method: str = "mean", token: TokenSpec = None, site: str = "resid_pre", batch_size: int = 16,
                   progress: bool | None = None, C: float = 1.0,
                   outliers: float | None = OUTLIER_FACTOR) -> SteeringVector:
        """Build a steering vector from contrast prompts (``positive[i]`` pairs with ``negative[i]``).

        ``token`` is the token whose activations are compared: an int (negative
        counts back from each prompt's end; default ``-1``, the last token) or
        ``"mean"`` (average over the prompt). For ``actadd`` the default is every
        position of the single pair (the "first positions"); an int picks one.
        ``site`` is the site kind (``resid_pre`` default, ``resid_post``...).
        ``C`` is the inverse regularisation of ``logistic``. With ``token="mean"``, tokens whose residual norm
        exceeds ``outliers`` x their prompt's median (the attention-sink first token) are left out of the
        average; ``outliers=None`` keeps every token (the behaviour before issue 21).

        The typical residual norm at each site is measured on the same prompts (:meth:`measure_resid_norms`),
        so ``to_steer(scale, unit="resid")`` can state a scale in residual norms.
        """
        pos, neg = check_contrast(model, positive, negative, method, site)
        sites = [f"{site}.{i}" for i in resolve_layers(model, layers)]
        vectors, tally = contrast_vectors(model, pos, neg, sites, method, token, site, batch_size, progress, C,
                                          outliers)
        sv = cls(vectors, method=method, site_kind=site, fingerprint=model.fingerprint(),
                 n_pairs=len(pos) if method != "logistic" else min(len(pos), len(neg)),
                 token=token if token is not None else (None if method == "actadd" else -1),
                 metadata={"n_positive": len(pos), "n_negative": len(neg),
                           **({"mean_outlier_factor": outliers} if token == "mean" else {})})
        if tally is None:
            return sv.measure_resid_norms(model, pos + neg, batch_size=2 * batch_size, outliers=outliers)
        norms, left_out = tally.result()
        sv.resid_norms = norms
        sv.metadata["resid_norm_outliers_left_out"] = left_out
        return sv

    def measure_resid_norms(self, model: HookedModel, prompts: Prompts, batch_size: int = 32,
                            outliers: float | None = OUTLIER_FACTOR) -> SteeringVector:
        """Measure (and keep, in ``resid_norms``) the typical residual norm at each of this vector's sites.

        The mean norm over the prompts' real tokens, tokens above ``outliers`` x their prompt's median left
        out (see :mod:`lmscope.probes.steering.scale`). For ``attn_out``/``mlp_out`` vectors the stream they
        are added to is measured: ``resid_pre`` of the same layer. Returns ``self``.
        """
        self.check(model)
        stream = {s: s if not s.startswith(("attn_out.", "mlp_out.")) else f"resid_pre.{_layer_of(s)}"
                  for s in self.vectors}
        norms, left_out = typical_norms(model, as_prompt_list(prompts, "prompts"), sorted(set(stream.values())),
                                        batch_size, outliers)
        self.resid_norms = {s: norms[stream[s]] for s in self.vectors}
        self.metadata["resid_norm_outliers_left_out"] = {s: left_out[stream[s]] for s in self.vectors}
        return self

    # -- access ---------------------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        """Layer index of each stored vector, in order."""
        return [_layer_of(s) for s in self.vectors]

    @property
    def sites(self) -> list[str]:
        return list(self.vectors)

    @property
    def norms(self) -> dict[str, float]:
        """L2 norm of each layer's vector (Frobenius for multi-position ActAdd)."""
        return {s: float(v.norm()) for s, v in self.vectors.items()}

    def __getitem__(self, layer: int | str) -> torch.Tensor:
        """The vector at a layer index or site name."""
        return self.vectors[self.site_of(layer)]

    def site_of(self, layer: int | str) -> str:
        if isinstance(layer, str):
            if layer not in self.vectors:
                raise SiteError(f"No vector for {layer!r}; this steering vector has {', '.join(self.vectors)}.")
            return layer
        for s in self.vectors:
            if _layer_of(s) == layer:
                return s
        if layer < 0:  # negative indices count from the model's end, which the fingerprint knows
            n = (self.fingerprint or {}).get("n_layers")
            if n is not None:
                return self.site_of(layer + n)
        raise SiteError(f"No vector for layer {layer}; this steering vector covers layers {self.layers}.")

    def sites_of(self, layers: LayerSpec = None) -> list[str]:
        """Site names of ``layers`` (indices or site names) in this vector; None/``"all"`` = all it has."""
        if layers is None or layers == "all":
            return self.sites
        return [self.site_of(i) for i in ([layers] if isinstance(layers, (int, str)) else list(layers))]

    def direction(self, layer: int | str) -> torch.Tensor:
        """Unit ``[d_model]`` direction at one layer (for reading and unit-norm steering)."""
        v = self[layer]
        if v.dim() != 1:
            raise InputError("This ActAdd vector has one row per position; build it with token=<int> "
                             "to get a single direction.")
        norm = v.norm()
        if norm == 0:
            raise InputError(f"The vector at {self.site_of(layer)} is zero; it has no direction.")
        return v / norm

    def check(self, model: HookedModel) -> None:
        """Raise :class:`ModelMismatchError` unless this vector was made for ``model``."""
        if self.fingerprint is not None:
            check_fingerprint(self.fingerprint, model, what="steering vector")
        for s, v in self.vectors.items():
            model.resolve(s)
            if v.shape[-1] != model.d_model:
                raise InputError(f"Vector {s} has width {v.shape[-1]} but the model has d_model={model.d_model}.")

    # -- application ----------------------------------------------------------------------------------
    def to_steer(self, scale: float = 1.0, positions: PositionSpec = "all", normalize: bool = False,
                 layers: LayerSpec = None, unit: str = "raw") -> list[Steer]:
        """``Steer`` interventions adding ``scale * vector`` at each (or the chosen) layer.

        ``unit`` says what ``scale`` counts: ``"raw"`` (default) the vector as stored (unit vectors with
        ``normalize``); ``"resid"`` the layer's typical residual norm (``resid_norms``), along the vector's
        direction, so ``scale=0.5`` adds half a typical residual whatever the vector's own norm (a
        multi-position ActAdd vector is scaled so that its longest row is ``scale`` residual norms;
        ``normalize`` is implied there).

        ``positions`` follows :mod:`lmscope.interventions.positions` ("all", "prompt",
        "generated", ints, slices, per-row specs) and keeps its meaning under
        ``generate`` with a KV cache. ``normalize`` makes each layer's vector unit
        norm first (Wolf et al. steer with a unit vector times ``r``). A
        multi-position ActAdd vector is added row ``i`` at prompt token ``i``
        (``positions`` must stay "all" for it: the rows fix the positions).
        """
        check_unit(unit)
        chosen = self.sites if layers is None else [self.site_of(i) for i in _layer_list(layers)]
        missing = [s for s in chosen if s not in self.resid_norms]
        if unit == "resid" and missing:
            raise InputError(f"unit='resid' needs the typical residual norm at {', '.join(missing)}, which this "
                             "vector has not measured (hand-made, or saved before issue 21): call "
                             "sv.measure_resid_norms(model, prompts) first, or use unit='raw'.")
        out: list[Steer] = []
        for s in chosen:
            v = self.vectors[s]
            if unit == "resid":
                longest = float(v.norm(dim=-1).max())
                if longest == 0:
                    raise InputError(f"The vector at {s} is zero; it has no direction to steer along.")
                v, normalize = v / longest * self.resid_norms[s], False
            if v.dim() == 1:
                out.append(Steer(s, v, scale, positions=None if positions == "all" else positions,
                                 normalize=normalize))
                continue
            if positions not in (None, "all"):
                raise InputError("A multi-position ActAdd vector fixes its own positions (row i at token i); "
                                 "build it with token=<int> to steer chosen positions.")
            norm = float(v.norm()) if normalize else 1.0
            if norm == 0:
                raise InputError("Cannot normalise a zero steering vector.")
            out.extend(Steer(s, row / norm, scale, positions=i) for i, row in enumerate(v))
        return out

    # -- persistence ----------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"format": "lmscope.steering_vector", "version": FORMAT_VERSION, "method": self.method,
                "site_kind": self.site_kind, "sites": self.sites, "fingerprint": self.fingerprint,
                "n_pairs": self.n_pairs, "token": self.token, "norms": self.norms, "metadata": self.metadata,
                "resid_norms": self.resid_norms}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``steering.json`` + ``tensors.safetensors`` into the folder ``path`` (atomic, no pickle)."""
        save_artifact(path, self.config(), dict(self.vectors), config_name=CONFIG_NAME)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: HookedModel | None = None) -> SteeringVector:
        """Read a saved vector; with ``model``, refuse it (ModelMismatchError) unless it was made for that model."""
        config, tensors = load_artifact(path, config_name=CONFIG_NAME)
        if config.get("format") != "lmscope.steering_vector":
            raise InputError(f"{path} does not hold a steering vector (format={config.get('format')!r}).")
        missing = [s for s in config["sites"] if s not in tensors]
        if missing:
            raise InputError(f"{path} is incomplete: no tensors for {', '.join(missing)}.")
        sv = cls({s: tensors[s] for s in config["sites"]}, method=config["method"], site_kind=config["site_kind"],
                 fingerprint=config.get("fingerprint"), n_pairs=config.get("n_pairs", 0), token=config.get("token"),
                 metadata=config.get("metadata", {}), resid_norms=config.get("resid_norms") or {})
        if model is not None:
            sv.check(model)
        return sv

    def __repr__(self) -> str:
        return (f"SteeringVector(method={self.method!r}, site={self.site_kind!r}, layers={self.layers}, "
                f"n_pairs={self.n_pairs})")


def _layer_of(site: str) -> int:
    try:
        return int(site.rsplit(".", 1)[1])
    except (IndexError, ValueError):
        raise InputError(f"Steering vector keys must be site names like 'resid_pre.3', got {site!r}.") from None


def _layer_list(layers: LayerSpec) -> list[int]:
    if isinstance(layers, int) and not isinstance(layers, bool):
        return [layers]
    if isinstance(layers, (list, tuple)) and layers and all(isinstance(x, int) for x in layers):
        return list(layers)
    raise InputError(f"layers must be an int or a list of ints, got {layers!r}.")
