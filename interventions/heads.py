"""Head selections shared by ``Ablate``, ``Patch`` and ``Cache``: per-site head indices or (layer, head) pairs.

Two forms, never mixed in one intervention:

- ``heads=[3, 7]`` (or one int) with per-head site(s) (:data:`HEAD_AXES`: ``q``, ``k``, ``v``, ``rot_q``,
  ``rot_k``, ``attn_scores``, ``attn_pattern``, ``head_z``, ``head_out``): those heads of every named site.
  On ``k``, ``v`` and ``rot_k`` (:data:`KV_KINDS`) the indices count KV heads, as the tensor does (and
  TransformerLens's ``hook_k``/``hook_v``); :mod:`lmscope.interventions.selection` maps them to query heads;
- ``heads=[(3, 1), (5, 0)]`` without a site: (layer, head) pairs across layers. They expand to the
  ``head_z`` sites of those layers, and each site touches only its own heads.

Layers and heads may be negative (from the end); both are checked against the model at bind time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence, Union

import torch

from .errors import InputError
from .sites import Site

if TYPE_CHECKING:
    from .model import HookedModel

HeadSpec = Union[int, Sequence[int], Sequence[tuple[int, int]], None]

#: Per-head site kinds and the axis of their (batched) value that holds the heads: 2 of ``[batch, pos, heads,
#: ...]``, 1 of the attention maps ``[batch, heads, query, key]``.
HEAD_AXES: dict[str, int] = {"q": 2, "k": 2, "v": 2, "rot_q": 2, "rot_k": 2, "attn_scores": 1, "attn_pattern": 1,
                             "head_z": 2, "head_out": 2}
#: Per-head kinds whose head axis counts KV heads (``n_kv_heads`` entries on grouped-query models).
KV_KINDS: tuple[str, ...] = ("k", "v", "rot_k")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_heads(heads: Any, site: Any, owner: str) -> tuple[list[int] | None, list[tuple[int, int]] | None]:
    """Split ``heads`` into the per-site form (ints) or the (layer, head) form; refuse mixtures and bad shapes."""
    if heads is None:
        if site is None:
            raise InputError(f"{owner} needs a site (e.g. 'head_z.3') or heads=[(layer, head), ...].")
        return None, None
    if _is_int(heads):
        heads = [heads]
    if not isinstance(heads, (list, tuple)) or not heads:
        raise InputError(f"heads must be an int, a non-empty list of ints (with per-head sites) or a non-empty list "
                         f"of (layer, head) pairs, got {heads!r}.")
    pairs = [isinstance(h, (list, tuple)) for h in heads]
    if all(_is_int(h) for h in heads):
        if site is None:
            raise InputError(f"heads={heads!r} are head indices of a site; name the per-head site(s) they belong to "
                             "(e.g. 'head_z.3', 'v.3'), or give (layer, head) pairs such as heads=[(3, 1)].")
        return list(heads), None
    if all(pairs) and all(len(h) == 2 and all(_is_int(x) for x in h) for h in heads):
        if site is not None:
            raise InputError(f"heads=[(layer, head), ...] names its own sites (the head_z of each layer); drop "
                             f"site={site!r}, or use site='head_z.L' with plain head indices heads=[h, ...].")
        return None, list(dict.fromkeys((int(h[0]), int(h[1])) for h in heads))
    raise InputError(f"heads mixes forms or has a malformed entry: {heads!r}. Use head indices of the named site "
                     "(heads=[3, 7]) or (layer, head) pairs across layers (heads=[(3, 1), (5, 0)]), not both.")


def parse_pairs(heads: Any, owner: str) -> list[tuple[int, int]]:
    """``heads`` as a non-empty list of (layer, head) pairs of ints (repeats dropped, order kept), for owners that
    take only that form (no site, no bare head indices); anything else is an InputError naming ``owner``."""
    items = list(heads) if isinstance(heads, (list, tuple)) else []
    if not items or not all(isinstance(h, (list, tuple)) and len(h) == 2 and all(_is_int(x) for x in h)
                            for h in items):
        raise InputError(f"{owner} takes a non-empty list of (layer, head) pairs of ints, e.g. [(3, 1), (5, 0)]; "
                         f"got {heads!r}.")
    return list(dict.fromkeys((int(h[0]), int(h[1])) for h in items))


def pair_sites(pairs: list[tuple[int, int]]) -> list[str]:
    """The ``head_z`` site names of the layers of ``pairs`` (in first-mention order)."""
    return [f"head_z.{layer}" for layer in dict.fromkeys(layer for layer, _ in pairs)]


def head_count(model: HookedModel, kind: str) -> int:
    """How many entries the head axis of a per-head ``kind`` has on ``model`` (KV heads on k/v/rot_k)."""
    return model.n_kv_heads if kind in KV_KINDS else model.n_heads


def _check_head(model: HookedModel, site: Site, h: int) -> None:
    """``h`` must index the head axis of ``site`` (KV heads on k/v/rot_k, with a hint at the query mapping)."""
    n = head_count(model, site.kind)
    if -n <= h < n:
        return
    if site.kind in KV_KINDS and n != model.n_heads:
        r = model.n_heads // n
        hint = (f" query head {h} reads KV head {h // r} (each KV head serves {r} query heads)"
                if 0 <= h < model.n_heads else "")
        raise InputError(f"Head index {h} out of range for {site.name}: this model has {n} KV heads "
                         f"(valid 0..{n - 1}); heads= on {'/'.join(KV_KINDS)} counts KV heads, as the tensor "
                         f"and TransformerLens's hook_k/hook_v do;{hint or ' see model.n_kv_heads'}.")
    raise InputError(f"Head index {h} out of range: this model has {n} heads per layer (valid 0..{n - 1}).")


def bind_heads(model: HookedModel, sites: list[Site], ints: list[int] | None,
               pairs: list[tuple[int, int]] | None) -> dict[Site, list[int]] | None:
    """Validate a selection against ``model``: the non-negative heads of each site, or None (whole site)."""
    n, nl = model.n_heads, model.n_layers
    if ints is None and pairs is None:
        return None
    if ints is not None:
        out_ints: dict[Site, list[int]] = {}
        for s in sites:
            if s.kind not in HEAD_AXES:
                raise InputError(f"heads= selects heads of a per-head site ({', '.join(HEAD_AXES)}), not of "
                                 f"{s.name}.")
            for h in ints:
                _check_head(model, s, h)
            size = head_count(model, s.kind)
            out_ints[s] = list(dict.fromkeys(h % size for h in ints))
        return out_ints
    assert pairs is not None
    out: dict[Site, list[int]] = {}
    for layer, h in pairs:
        if not -nl <= layer < nl:
            raise InputError(f"Layer {layer} of head ({layer}, {h}) is out of range: this model has {nl} layers "
                             f"(valid 0..{nl - 1}, or -{nl}..-1 from the end).")
        if not -n <= h < n:
            raise InputError(f"Head index {h} of head ({layer}, {h}) is out of range: this model has {n} heads per "
                             f"layer (valid 0..{n - 1}).")
        heads = out.setdefault(Site("head_z", layer % nl), [])
        if h % n not in heads:
            heads.append(h % n)
    return out


def head_mask(heads: list[int], n_heads: int, device: torch.device) -> torch.Tensor:
    """``[n_heads]`` boolean mask of the selected heads."""
    mask = torch.zeros(n_heads, dtype=torch.bool, device=device)
    mask[heads] = True
    return mask


def encode_heads(ints: list[int] | None, pairs: list[tuple[int, int]] | None) -> Any:
    """JSON form: a list of ints, a list of ``[layer, head]`` lists, or None."""
    return ints if pairs is None else [list(p) for p in pairs]


def decode_heads(data: Any) -> Any:
    """Inverse of :func:`encode_heads` (``[layer, head]`` lists back to tuples)."""
    if isinstance(data, list) and data and all(isinstance(x, list) for x in data):
        return [tuple(x) for x in data]
    return data
