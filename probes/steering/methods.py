"""The four ways to build a steering vector from contrast prompts, and the checks that come before them.

:meth:`~lmscope.probes.steering.vectors.SteeringVector.from_pairs` checks the request with
:func:`check_contrast` and gets one vector per site from :func:`contrast_vectors`:

- ``actadd`` with no ``token``: :func:`actadd_vectors`, ``resid(p+) - resid(p-)`` at every position of the
  single pair (the shorter prompt right-filled with a space token);
- otherwise the activations at one token (or the prompt mean) of every prompt, collected pair by pair
  (:func:`collect_pairs`), and :func:`layer_vector` per site: ``mean``/``actadd`` the mean difference,
  ``pca`` the first principal component of the alternately flipped differences, ``logistic`` the weight
  direction of a logistic regression; the last two are scaled by the mean difference's projection on
  their direction, so every method's vectors have comparable norms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions.cache import Cache
from lmscope.interventions.collect import NormTally, TokenSpec, collect_activations, validate_token
from lmscope.interventions.errors import InputError, SiteError
from lmscope.interventions.inputs import Batch
from lmscope.interventions.progress import bar_disable
from lmscope.interventions.specs import Prompts, as_prompt_list

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

METHODS = ("mean", "actadd", "pca", "logistic")
RESIDUAL_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def check_contrast(model: HookedModel, positive: Prompts, negative: Prompts, method: str,
                   site: str) -> tuple[list[Any], list[Any]]:
    """The positive and negative prompt lists, once ``method``, the ``site`` kind and the numbers of prompts
    suit each other (a specific :class:`InputError` or :class:`SiteError` otherwise)."""
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
    return pos, neg


def contrast_vectors(model: HookedModel, pos: list[Any], neg: list[Any], sites: list[str], method: str,
                     token: TokenSpec, site: str, batch_size: int, progress: bool | None, C: float,
                     outliers: float | None) -> tuple[dict[str, torch.Tensor], NormTally | None]:
    """One vector per site, and the tally of the sites' typical residual norms measured on the same forwards
    (None where it cannot be: ActAdd over every position, and ``attn_out``/``mlp_out`` vectors, whose stream
    is ``resid_pre`` -- :meth:`~lmscope.probes.steering.vectors.SteeringVector.measure_resid_norms` runs them)."""
    if method == "actadd" and token is None:
        return actadd_vectors(model, pos[0], neg[0], sites), None
    tok: int | str = -1 if token is None else token
    if isinstance(tok, str) and tok != "mean":
        raise InputError(f"token must be an int or 'mean', got {tok!r}.")
    validate_token(tok, model.tokenize(pos).lengths.tolist(), "positive")
    validate_token(tok, model.tokenize(neg).lengths.tolist(), "negative")
    tally = NormTally(sites, outliers) if site not in ("attn_out", "mlp_out") else None
    hp_all, hn_all = collect_pairs(model, pos, neg, sites, tok, batch_size, progress, method,
                                   outliers if tok == "mean" else None, tally)
    return {s: layer_vector(method, hp_all[s], hn_all[s], C) for s in sites}, tally


def collect_pairs(model: HookedModel, pos: list[Any], neg: list[Any], sites: list[str], token: int | str,
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
                      disable=bar_disable(show), leave=False):
        chunk = pos[start:start + batch_size]
        both = collect_activations(model, chunk + neg[start:start + batch_size], sites, token,
                                   batch_size=2 * len(chunk), progress=False, outliers=outliers, norms=norms)
        for s in sites:
            hp[s].append(both[s][:len(chunk)])
            hn[s].append(both[s][len(chunk):])
    return {s: torch.cat(v) for s, v in hp.items()}, {s: torch.cat(v) for s, v in hn.items()}


def layer_vector(method: str, hp: torch.Tensor, hn: torch.Tensor, C: float) -> torch.Tensor:
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


def actadd_vectors(model: HookedModel, pos: Any, neg: Any, sites: list[str]) -> dict[str, torch.Tensor]:
    """ActAdd: ``resid(p+) - resid(p-)`` at every position, the shorter prompt right-filled with spaces."""
    a, b = _ids(model, pos), _ids(model, neg)
    k = max(len(a), len(b))
    fill = _filler_id(model)
    a, b = a + [fill] * (k - len(a)), b + [fill] * (k - len(b))
    res = model.run([a, b], [Cache(sites)])
    return {s: (res.cache[s][0].float() - res.cache[s][1].float()).cpu() for s in sites}  # float32 before subtracting
