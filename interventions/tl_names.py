"""TransformerLens naming habits: ``get_act_name``, ``names_filter`` and each site's TransformerLens name.

- :func:`get_act_name` is TransformerLens's ``utils.get_act_name`` returning lmscope names:
  ``get_act_name("resid_pre", 3) -> "resid_pre.3"``, ``get_act_name("z", 3) -> "head_z.3"``,
  ``get_act_name("normalized", 3, "ln1") -> "ln1.3"``, ``get_act_name("k6") -> "k.6"``. It takes our kind names,
  TransformerLens's short names (:data:`TL_SHORT`) and full hook names; ``ActivationCache`` indexes with the same
  tuples (``cache["resid_pre", 3]``, ``cache["pattern", -1]``).
- :func:`tl_name` is a site's TransformerLens hook name (``head_z.3 -> blocks.3.attn.hook_z``).
- :func:`filter_sites` turns a TransformerLens ``names_filter`` (None, a name, a list of names, or a function
  of a name) into the model's sites; ``Cache(fn)`` and ``HookedModel.run_with_cache`` use it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

from .errors import InputError
from .sites import LAYER_SITES, MODEL_SITES, TL_ALIASES, Site, all_site_names, from_transformerlens

if TYPE_CHECKING:
    from .model import HookedModel

#: A TransformerLens ``names_filter``: None (every site), one name, a list of names, or a predicate on names.
NamesFilter = Union[None, str, Sequence[str], Callable[[str], bool]]

#: TransformerLens's short activation names (``utils.get_act_name``'s first argument, its aliases included) and
#: the lmscope kind each denotes. ``normalized`` needs the layer type (``ln1``/``ln2``) when a layer is given.
TL_SHORT: dict[str, str] = {
    "embed": "embed", "resid_pre": "resid_pre", "q": "q", "k": "k", "v": "v", "query": "q", "key": "k",
    "value": "v", "rot_q": "rot_q", "rot_k": "rot_k", "attn_scores": "attn_scores", "attn_logits": "attn_scores",
    "pattern": "attn_pattern", "attn": "attn_pattern", "z": "head_z", "result": "head_out",
    "attn_out": "attn_out", "resid_mid": "resid_mid", "pre": "mlp_pre", "post": "mlp_post",
    "mlp_out": "mlp_out", "resid_post": "resid_post", "logits": "logits",
}
#: TransformerLens short names with no lmscope site, and why (an InputError says so).
TL_WITHOUT_SITE: dict[str, str] = {
    "scale": "lmscope has no site for a norm's scale factor; 'ln1.L'/'ln2.L'/'final_norm' are the norms' outputs",
    "mid": "lmscope has no site inside a solu MLP; 'mlp_post.L' is the MLP's hidden layer",
    "pre_linear": "lmscope has no site for the pre-activation of a gated MLP's linear half; use 'mlp_pre.L'",
    "pos_embed": "lmscope has no site for learned position embeddings ('embed' is the token embedding)",
}
_COMPACT = re.compile(r"^([a-z]+)(\d+)([a-z]?.*)$")  # TransformerLens's "k6", "pre5", "normalized3ln1"
_NORMS = {"ln1": "ln1", "ln2": "ln2"}


def _kind(name: str, layer_type: str | None, has_layer: bool) -> str:
    """The lmscope kind a short name (and layer type) denotes, or an InputError saying why there is none."""
    if name in LAYER_SITES or name in MODEL_SITES:
        return name
    if name == "normalized":
        if not has_layer:
            return "final_norm"
        if layer_type in _NORMS:
            return _NORMS[layer_type]
        raise InputError(f"'normalized' of a layer needs layer_type 'ln1' or 'ln2' (the attention's or the MLP's "
                         f"norm), got {layer_type!r}: get_act_name('normalized', 3, 'ln1') -> 'ln1.3'.")
    if name in TL_SHORT:
        return TL_SHORT[name]
    if name in TL_WITHOUT_SITE:
        raise InputError(f"TransformerLens's {name!r} has no lmscope site: {TL_WITHOUT_SITE[name]}.")
    known = sorted(set(TL_SHORT) | set(LAYER_SITES) | set(MODEL_SITES) | {"normalized"})
    raise InputError(f"Unknown activation name {name!r}; known: {', '.join(known)}.")


def get_act_name(name: str, layer: int | str | None = None, layer_type: str | None = None) -> str:
    """The lmscope site name for TransformerLens's ``utils.get_act_name(name, layer, layer_type)``.

    ``name`` is an lmscope kind (``"resid_pre"``, ``"head_z"``), a TransformerLens short name (``"z"``,
    ``"pattern"``, ``"result"``, ``"pre"``, ``"normalized"``...), the compact form (``"k6"``, ``"normalized3ln1"``)
    or a full name (returned as our name: ``"blocks.3.hook_resid_pre" -> "resid_pre.3"``). ``layer`` may be
    negative or ``"*"``; model-wide kinds (``embed``, ``final_norm``, ``logits``) take none.
    """
    if not isinstance(name, str):
        raise InputError(f"get_act_name needs a name string, got {type(name).__name__}.")
    if layer is None and layer_type is None:
        if ("." in name or name.startswith("hook_")) and (tl := from_transformerlens(name)) is not None:
            return tl
        if "." in name:
            return name  # already a site name such as "resid_pre.3"
        compact = _COMPACT.match(name)
        if compact is not None:
            name, layer, layer_type = compact.group(1), int(compact.group(2)), compact.group(3) or None
    kind = _kind(name, layer_type, layer is not None)
    if kind in MODEL_SITES:
        if layer is not None:
            raise InputError(f"{kind!r} is model-wide and takes no layer (got layer {layer!r}).")
        return kind
    if layer is None:
        raise InputError(f"{name!r} is per layer: give a layer, e.g. get_act_name({name!r}, 3) -> '{kind}.3'.")
    if isinstance(layer, bool) or not (isinstance(layer, int) or layer == "*"):
        raise InputError(f"layer must be an int (negative from the end) or '*', got {layer!r}.")
    return f"{kind}.{layer}"


_TL_OF_KIND = {kind: alias for alias, kind in TL_ALIASES.items()}


def tl_name(site: Site) -> str:
    """The TransformerLens hook name of ``site`` (``head_z.3 -> blocks.3.attn.hook_z``)."""
    alias = _TL_OF_KIND[site.kind]
    return alias if site.layer is None else alias.replace("{L}", str(site.layer))


def filter_sites(model: HookedModel, names_filter: NamesFilter) -> list[Site]:
    """The model's sites a TransformerLens ``names_filter`` selects, in forward order.

    None selects every site; a string or a list names sites (lmscope or TransformerLens names, wildcards
    allowed). A function is asked about each site's TransformerLens name (``blocks.3.attn.hook_z``), as in
    TransformerLens; a function that accepts none of those is asked about the lmscope names instead
    (``lambda n: n.startswith("resid_post")``). Selecting nothing is an InputError (a typo, not a wish).
    """
    names = all_site_names(model.n_layers, model.available_kinds)
    if names_filter is None:
        return model.resolve(names)
    if isinstance(names_filter, str) or (isinstance(names_filter, (list, tuple))
                                         and all(isinstance(n, str) for n in names_filter)):
        return model.resolve(names_filter if isinstance(names_filter, str) else list(names_filter))
    if not callable(names_filter):
        raise InputError(f"names_filter must be None, a name, a list of names or a function of a name, got "
                         f"{type(names_filter).__name__}.")
    sites = model.resolve(names)
    chosen = [s for s in sites if _accepts(names_filter, tl_name(s))]
    if not chosen:
        chosen = [s for s in sites if _accepts(names_filter, s.name)]
    if not chosen:
        raise InputError("names_filter accepts no site of this model, by TransformerLens names (e.g. "
                         f"{tl_name(sites[0])!r}) or lmscope names (e.g. {sites[0].name!r}).")
    return chosen


def _accepts(fn: Callable[[str], Any], name: str) -> bool:
    return bool(fn(name))
