"""Steering vectors: directions in the residual stream built from contrast pairs, and how to apply them.

A :class:`SteeringVector` holds one vector per layer (site name -> ``[d_model]``
tensor, or ``[k, d_model]`` for multi-position ActAdd) plus where it came from
(method, model fingerprint, number of pairs). It is built by
:meth:`SteeringVector.from_pairs` with one of four methods:

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
from lmscope.interventions.cache import Cache
from lmscope.interventions.collect import OUTLIER_FACTOR, NormTally, TokenSpec, collect_activations, validate_token
from lmscope.interventions.errors import InputError, SiteError
from lmscope.interventions.fingerprint import check_fingerprint
from lmscope.interventions.inputs import Batch
from lmscope.interventions.positions import PositionSpec
from lmscope.interventions.specs import LayerSpec, Prompts, as_prompt_list, resolve_layers
from lmscope.interventions.steer import Steer

from .scale import check_unit, typical_norms

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

METHODS = ("mean", "actadd", "pca", "logistic")
RESIDUAL_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
CONFIG_NAME = "steering.json"
FORMAT_VERSION = 1



def _collect_pairs(model: HookedModel, pos: list[Any], neg: list[Any], sites: list[str], token: int | str,
                   batch_size: int, progress: bool | None, method: str, outliers: float | None = None,
                   norms: NormTally | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Positive and negative activations; paired prompts share a batch (``batch_size`` pairs per run).
    ``norms`` also tallies the sites' typical residual norms from the same forwards."""
    if len(pos) != len(neg):  # unpaired (logistic): each side on its own
        return (collect_activations(model, pos, sites, token, batch_size, progress, "positives", outliers, norms),
                collect_activations(model, neg, sites, token, batch_size, progress, "negatives", outliers, norms))
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}.")
    from tqdm.auto import tqdm

    n_batches = (len(pos) + batch_size - 1) // batch_size
    show = n_batches > 4 if progress is None else progress
    hp: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    hn: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    for start in tqdm(range(0, len(pos), batch_size), total=n_batches, desc=f"steering ({method})",
                      disable=not show, leave=False):
        chunk = pos[start:start + batch_size]
        both = collect_activations(model, chunk + neg[start:start + batch_size], sites, token,
                                   batch_size=2 * len(chunk), progress=False, outliers=outliers, norms=norms)
        for s in sites:
            hp[s].append(both[s][:len(chunk)])
            hn[s].append(both[s][len(chunk):])
    return {s: torch.cat(v) for s, v in hp.items()}, {s: torch.cat(v) for s, v in hn.items()}


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
        if method not in METHODS:
            raise InputError(f"Unknown steering method {method!r}; choose one of {', '.join(METHODS)}.")
        if site not in RESIDUAL_KINDS:
            raise InputError(f"site must be a residual-width site kind ({', '.join(RESIDUAL_KINDS)}), got {site!r}.")
        if site not in model.available_kinds:
            raise SiteError(f"This {model.arch.name} model has no {site!r} site.")
        pos, neg = as_prompt_list(positive, "positive"), as_prompt_list(negative, "negative")
        if method != "logistic" and len(pos) != len(neg):
            raise InputError(f"Method {method!r} needs paired prompts: got {len(pos)} positives and "
                             f"{len(neg)} negatives.")
        if method == "actadd" and len(pos) != 1:
            raise InputError(f"actadd uses exactly one prompt pair, got {len(pos)}; use method='mean' for many.")
        if method == "pca" and len(pos) < 2:
            raise InputError("pca needs at least two pairs (one difference has no variance to analyse).")
        if method == "logistic" and (len(pos) < 2 or len(neg) < 2):
            raise InputError("logistic needs at least two positive and two negative prompts.")
        layer_ids = resolve_layers(model, layers)
        sites = [f"{site}.{i}" for i in layer_ids]
        tally = None
        if method == "actadd" and token is None:
            vectors = _actadd_vectors(model, pos[0], neg[0], sites)
        else:
            tok: int | str = -1 if token is None else token
            if isinstance(tok, str) and tok != "mean":
                raise InputError(f"token must be an int or 'mean', got {tok!r}.")
            validate_token(tok, model.tokenize(pos).lengths.tolist(), "positive")
            validate_token(tok, model.tokenize(neg).lengths.tolist(), "negative")
            # the residual sites' typical norms come from the same forwards; attn_out / mlp_out vectors are
            # measured against resid_pre (measure_resid_norms runs them)
            tally = NormTally(sites, outliers) if site not in ("attn_out", "mlp_out") else None
            hp_all, hn_all = _collect_pairs(model, pos, neg, sites, tok, batch_size, progress, method,
                                            outliers if tok == "mean" else None, tally)
            vectors = {s: _direction(method, hp_all[s], hn_all[s], C) for s in sites}
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


def _direction(method: str, hp: torch.Tensor, hn: torch.Tensor, C: float) -> torch.Tensor:
    """One layer's vector from positive ``[n, d]`` and negative ``[m, d]`` activations."""
    hp64, hn64 = hp.double(), hn.double()
    mean_diff = hp64.mean(0) - hn64.mean(0)
    if method in ("mean", "actadd"):
        return (hp64 - hn64).mean(0).float()
    if method == "pca":
        diffs = hp64 - hn64
        signs = torch.ones(len(diffs), dtype=diffs.dtype)
        signs[1::2] = -1  # RepE: random pair order; alternate deterministically
        flipped = diffs * signs[:, None]
        centred = flipped - flipped.mean(0)
        if float(centred.abs().max()) == 0.0:
            return torch.zeros(hp.shape[1])
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        u = vh[0]
    else:  # logistic
        import numpy as np
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        x = torch.cat([hp64, hn64]).numpy()
        y = np.r_[np.ones(len(hp64)), np.zeros(len(hn64))]
        if np.allclose(x, x[0]):  # nothing to separate
            return torch.zeros(hp.shape[1])
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(C=C, max_iter=2000).fit(scaler.transform(x), y)
        # back to raw activation coordinates: w_raw = w_std / sigma
        u = torch.from_numpy(clf.coef_[0] / np.where(scaler.scale_ > 0, scaler.scale_, 1.0))
        if not bool(torch.isfinite(u).all()) or float(u.norm()) == 0.0:
            return torch.zeros(hp.shape[1])
        u = u / u.norm()
    proj = float(mean_diff @ u)
    if proj < 0:  # sign convention: positives project higher
        u, proj = -u, -proj
    if proj == 0.0:
        return torch.zeros(hp.shape[1])
    return (u * proj).float()


def _ids(model: HookedModel, prompt: Any) -> list[int]:
    batch: Batch = model.tokenize([prompt])
    return batch.input_ids[0][batch.attention_mask[0].bool()].tolist()


def _filler_id(model: HookedModel) -> int:
    tok = model.tokenizer
    if tok is None:
        return 0
    ids = tok(" ", add_special_tokens=False)["input_ids"]
    if len(ids) == 1:
        return int(ids[0])
    return int(tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))


def _actadd_vectors(model: HookedModel, pos: Any, neg: Any, sites: list[str]) -> dict[str, torch.Tensor]:
    """ActAdd: ``resid(p+) - resid(p-)`` at every position, the shorter prompt right-filled with spaces."""
    a, b = _ids(model, pos), _ids(model, neg)
    k = max(len(a), len(b))
    fill = _filler_id(model)
    a, b = a + [fill] * (k - len(a)), b + [fill] * (k - len(b))
    res = model.run([a, b], [Cache(sites)])
    return {s: (res.cache[s][0].float() - res.cache[s][1].float()).cpu() for s in sites}  # float32 before subtracting
