"""Site grammar: parsing, validation, wildcard expansion and "did you mean".

A site names one activation of the model: ``kind.layer`` for per-layer sites
(``resid_post.3``, ``head_z.-1``, ``attn_out.*``) or a bare ``kind`` for the
model-wide ones (``embed``, ``final_norm``, ``logits``). Layers are integers,
negative ones count from the end, ``*`` means every layer. TransformerLens hook
names (``blocks.3.hook_resid_pre``, ``blocks.3.attn.hook_z``, ``hook_embed``...)
resolve to the same sites through the declarative :data:`TL_ALIASES` table. This
module is the only place site names are parsed; everything else receives :class:`Site`.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass

from .errors import SiteError

#: Sites that exist once per layer, in the order they occur inside a layer.
LAYER_SITES: tuple[str, ...] = (
    "resid_pre",
    "ln1",
    "q",
    "k",
    "v",
    "rot_q",
    "rot_k",
    "attn_scores",
    "attn_pattern",
    "head_z",
    "head_out",
    "attn_out",
    "resid_mid",
    "ln2",
    "mlp_pre",
    "mlp_post",
    "mlp_out",
    "resid_post",
)
#: Sites that exist once per model.
MODEL_SITES: tuple[str, ...] = ("embed", "final_norm", "logits")
#: Sites shaped [batch, heads, query_pos, key_pos] (position selections act on the query axis).
ATTENTION_MAP_SITES: tuple[str, ...] = ("attn_scores", "attn_pattern")

SITE_DOCS: dict[str, str] = {
    "embed": "token embedding module output [batch, pos, d_model] (with any scale applied inside the module, as "
             "Gemma's; before learned position embeddings)",
    "resid_pre": "residual stream entering layer L [batch, pos, d_model]",
    "ln1": "the attention's input: resid_pre.L after the layer's attention norm (as is where there is none) "
           "[batch, pos, d_model]",
    "q": "queries as the projection produces them, before any q-norm and rotary [batch, pos, n_heads, d_head]",
    "k": "keys as the projection produces them, before any k-norm and rotary [batch, pos, n_kv_heads, d_head]",
    "v": "values as the projection produces them [batch, pos, n_kv_heads, d_head]",
    "rot_q": "queries as the attention's dot product uses them: after any q-norm and rotary "
             "[batch, pos, n_heads, d_head]",
    "rot_k": "keys as the attention's dot product uses them: after any k-norm and rotary, before grouped-query "
             "repetition [batch, pos, n_kv_heads, d_head]",
    "attn_scores": "pre-softmax attention scores with scale, soft-cap and mask included "
                   "[batch, n_heads, query_pos, key_pos] (runs eager attention)",
    "attn_pattern": "attention probabilities [batch, n_heads, query_pos, key_pos] (runs eager attention)",
    "head_z": "per-head attention outputs before the output projection [batch, pos, n_heads, d_head]",
    "head_out": "each head's output through its slice of the output projection (no bias) "
                "[batch, pos, n_heads, d_model]",
    "attn_out": "attention contribution added to the residual stream, after any post-attention norm "
                "[batch, pos, d_model]",
    "resid_mid": "residual stream after attention, before the MLP [batch, pos, d_model] (sequential-residual models)",
    "ln2": "the MLP's input: the stream it reads (resid_mid.L; resid_pre.L on parallel blocks) after the MLP norm "
           "(as is where there is none) [batch, pos, d_model]",
    "mlp_pre": "MLP neuron pre-activations: the gate projection's output on gated MLPs, else the input "
               "projection's [batch, pos, d_mlp] (not on MoE models)",
    "mlp_post": "MLP neurons: the input of the MLP's output projection (act(gate) * up on gated MLPs) "
                "[batch, pos, d_mlp] (not on MoE models)",
    "mlp_out": "MLP (or MoE) contribution added to the residual stream, after any post-MLP norm [batch, pos, d_model]",
    "resid_post": "residual stream leaving layer L [batch, pos, d_model]",
    "final_norm": "final normalisation output [batch, pos, d_model]",
    "logits": "the logits the model returns, after any logit scale or soft-cap [batch, pos, vocab]",
}

#: Why a kind can be missing on an architecture (the SiteError says so, then lists what is available).
UNAVAILABLE_WHY: dict[str, str] = {
    "resid_mid": "This model uses a parallel residual (attention and MLP read the same input), so there is no "
                 "residual stream between them; use 'resid_pre', 'attn_out' and 'mlp_out' instead.",
    "attn_pattern": "This model's attention computes its probabilities inline (e.g. Falcon with ALiBi) and its "
                    "adapter has no port exposing them; 'head_z' is available.",
    "attn_scores": "This model's attention computes its scores inline (e.g. Falcon with ALiBi) and its adapter "
                   "has no port exposing them; 'head_z' is available.",
    "mlp_pre": "This model's MLP is a mixture of experts: each token's neurons live in the experts it is routed "
               "to, so there is no single [batch, pos, d_mlp] activation; use 'mlp_out'.",
    "mlp_post": "This model's MLP is a mixture of experts: each token's neurons live in the experts it is routed "
                "to, so there is no single [batch, pos, d_mlp] activation; use 'mlp_out'.",
}
for _kind in ("q", "k", "v"):
    UNAVAILABLE_WHY[_kind] = "This model's adapter names no query/key/value projection."
for _kind in ("rot_q", "rot_k"):
    UNAVAILABLE_WHY[_kind] = "This model's attention does not call transformers' attention interface."

_PATTERN = re.compile(r"^(?P<kind>[a-z_][a-z0-9_]*)(?:\.(?P<layer>-?\d+|\*))?$")

#: TransformerLens hook names and the site kind each one denotes. ``{L}`` stands for the layer (an int, negative
#: from the end, or ``*``); a name without ``{L}`` is model-wide. Kinds a model lacks raise the usual SiteError.
TL_ALIASES: dict[str, str] = {
    "hook_embed": "embed",
    "blocks.{L}.hook_resid_pre": "resid_pre",
    "blocks.{L}.ln1.hook_normalized": "ln1",
    "blocks.{L}.ln2.hook_normalized": "ln2",
    "blocks.{L}.attn.hook_q": "q",
    "blocks.{L}.attn.hook_k": "k",
    "blocks.{L}.attn.hook_v": "v",
    "blocks.{L}.attn.hook_rot_q": "rot_q",
    "blocks.{L}.attn.hook_rot_k": "rot_k",
    "blocks.{L}.attn.hook_attn_scores": "attn_scores",
    "blocks.{L}.attn.hook_pattern": "attn_pattern",
    "blocks.{L}.attn.hook_z": "head_z",
    "blocks.{L}.attn.hook_result": "head_out",
    "blocks.{L}.hook_attn_out": "attn_out",
    "blocks.{L}.hook_resid_mid": "resid_mid",
    "blocks.{L}.mlp.hook_pre": "mlp_pre",
    "blocks.{L}.mlp.hook_post": "mlp_post",
    "blocks.{L}.hook_mlp_out": "mlp_out",
    "blocks.{L}.hook_resid_post": "resid_post",
    "ln_final.hook_normalized": "final_norm",
    "unembed.hook_out": "logits",  # TransformerBridge only (HookedTransformer has no hook on the logits)
}
_TL_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile("^" + re.escape(alias).replace(re.escape("{L}"), r"(?P<layer>-?\d+|\*)") + "$"), kind)
    for alias, kind in TL_ALIASES.items())


def from_transformerlens(name: str) -> str | None:
    """Our name for a TransformerLens hook name (``blocks.3.attn.hook_z`` -> ``head_z.3``), or None."""
    for pattern, kind in _TL_PATTERNS:
        m = pattern.match(name)
        if m is not None:
            return kind if "layer" not in pattern.groupindex else f"{kind}.{m.group('layer')}"
    return None


def _looks_like_transformerlens(name: str) -> bool:
    return name.startswith(("blocks.", "hook_", "ln_final", "embed.", "unembed")) or ".hook_" in name


def _suggest_for_transformerlens(name: str, kinds: set[str]) -> str:
    """"Did you mean" for a mistyped TransformerLens name: the closest aliases, written as our names."""
    found = re.search(r"\.(-?\d+|\*)\.", name)
    layer = found.group(1) if found else "0"
    ours = {alias.replace("{L}", layer): kind if "{L}" not in alias else f"{kind}.{layer}"
            for alias, kind in TL_ALIASES.items() if kind in kinds}
    close = difflib.get_close_matches(name, list(ours), n=3, cutoff=0.6)
    return f" Did you mean {', '.join(f'{ours[c]!r} (TransformerLens {c!r})' for c in close)}?" if close else ""


@dataclass(frozen=True, order=True)
class Site:
    """A resolved site: a kind and, for per-layer kinds, a non-negative layer index."""

    kind: str
    layer: int | None = None

    @property
    def name(self) -> str:
        return self.kind if self.layer is None else f"{self.kind}.{self.layer}"

    def __str__(self) -> str:
        return self.name


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def resolve_sites(
    spec: str | Site | list[str | Site] | tuple[str | Site, ...],
    n_layers: int,
    available: frozenset[str] | None = None,
) -> list[Site]:
    """Parse one site name (or several) into concrete :class:`Site` objects.

    ``available`` is the set of kinds the architecture supports (``resid_mid``
    is missing on parallel-residual models); wildcards expand in layer order.
    Raises :class:`SiteError` naming the closest valid names or the valid layer range.
    """
    if isinstance(spec, (list, tuple)):
        out: dict[Site, None] = {}
        for s in spec:
            out.update(dict.fromkeys(_resolve_cached(s.name if isinstance(s, Site) else s, n_layers, available)))
        return list(out)
    if isinstance(spec, Site):
        spec = spec.name
    return list(_resolve_cached(spec, n_layers, available))


@functools.lru_cache(maxsize=4096)
def _resolve_cached(spec: str, n_layers: int, available: frozenset[str] | None) -> tuple[Site, ...]:
    return tuple(_resolve_one(spec, n_layers, available))


def _resolve_one(spec: str, n_layers: int, available: frozenset[str] | None) -> list[Site]:
    if not isinstance(spec, str):
        raise SiteError(f"A site must be a string like 'resid_post.3', got {type(spec).__name__}.")
    kinds = set(available) if available is not None else set(LAYER_SITES) | set(MODEL_SITES)
    spec = spec.strip()
    m = _PATTERN.match(from_transformerlens(spec) or spec)
    valid_examples = [f"{k}.0" for k in LAYER_SITES if k in kinds] + [k for k in MODEL_SITES if k in kinds]
    if m is None:
        hint = _suggest_for_transformerlens(spec, kinds) if _looks_like_transformerlens(spec) else ""
        raise SiteError(f"Malformed site name {spec!r}.{hint or _suggest(spec, valid_examples)} "
                        "Sites look like 'resid_post.3', 'head_z.-1', 'attn_out.*' or 'logits' "
                        "(TransformerLens names such as 'blocks.3.hook_resid_pre' work too).")
    kind, layer = m.group("kind"), m.group("layer")
    if kind not in LAYER_SITES and kind not in MODEL_SITES:
        raise SiteError(f"Unknown site kind {kind!r} in {spec!r}.{_suggest(kind, sorted(kinds))} "
                        f"Valid kinds: {', '.join(k for k in LAYER_SITES + MODEL_SITES if k in kinds)}.")
    if kind not in kinds:
        why = f" {UNAVAILABLE_WHY[kind]}" if kind in UNAVAILABLE_WHY else ""
        raise SiteError(f"Site kind {kind!r} is not available for this architecture.{why} Available kinds: "
                        f"{', '.join(k for k in LAYER_SITES + MODEL_SITES if k in kinds)}.")
    if kind in MODEL_SITES:
        if layer is not None:
            raise SiteError(f"Site {kind!r} is model-wide and takes no layer; write {kind!r}, not {spec!r}.")
        return [Site(kind)]
    if layer is None:
        raise SiteError(f"Site kind {kind!r} needs a layer: '{kind}.0' .. '{kind}.{n_layers - 1}', "
                        f"negative indices from the end, or '{kind}.*' for every layer.")
    if layer == "*":
        return [Site(kind, i) for i in range(n_layers)]
    idx = int(layer)
    if not -n_layers <= idx < n_layers:
        raise SiteError(f"Layer {idx} is out of range in {spec!r}: this model has {n_layers} layers, "
                        f"valid layers are 0..{n_layers - 1} (or -{n_layers}..-1 from the end).")
    return [Site(kind, idx % n_layers)]


def resolve_site(spec: str | Site, n_layers: int, available: frozenset[str] | None = None) -> Site:
    """Resolve a name that must denote exactly one site (no wildcard)."""
    sites = resolve_sites(spec, n_layers, available)
    if len(sites) != 1:
        raise SiteError(f"{spec!r} names {len(sites)} sites; this needs exactly one (no '*').")
    return sites[0]


def head_label(site: Site, head: int | None, neuron: int | None = None) -> str:
    """A row label of a result: the site name, ``head_z.3:h2`` for one head of a site (a KV head on k/v/rot_k),
    or ``mlp_post.3:n1042`` for one neuron."""
    if neuron is not None:
        return f"{site.name}:n{neuron}"
    return site.name if head is None else f"{site.name}:h{head}"


def parse_cell_label(label: str) -> tuple[Site, int | None, int | None]:
    """Inverse of :func:`head_label` for concrete labels: (site, head, neuron)."""
    name, sep, index = label.partition(":")
    m = _PATTERN.match(name)
    layer = m.group("layer") if m else None
    if m is None or (sep and (index[:1] not in ("h", "n") or not index[1:].isdigit())) or (
            layer is not None and not layer.isdigit()):
        raise SiteError(f"{label!r} is not a concrete site label like 'resid_pre.3', 'head_z.3:h2' or "
                        "'mlp_post.3:n1042'.")
    site = Site(m.group("kind"), None if layer is None else int(layer))
    return site, (int(index[1:]) if index[:1] == "h" else None), (int(index[1:]) if index[:1] == "n" else None)


def parse_head_label(label: str) -> tuple[Site, int | None]:
    """Inverse of :func:`head_label` for concrete site or head labels (a neuron label is a SiteError)."""
    site, head, neuron = parse_cell_label(label)
    if neuron is not None:
        raise SiteError(f"{label!r} is a neuron label, not a site or head label.")
    return site, head


def all_site_names(n_layers: int, available: frozenset[str]) -> list[str]:
    """Every concrete site name in forward order."""
    names = ["embed"] if "embed" in available else []
    for layer in range(n_layers):
        names += [f"{k}.{layer}" for k in LAYER_SITES if k in available]
    names += [k for k in ("final_norm", "logits") if k in available]
    return names
