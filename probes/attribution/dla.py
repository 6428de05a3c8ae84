"""Direct logit attribution: a token's final logit (or a logit difference) split into per-component terms.

The residual stream at the last layer is a sum of contributions: ``resid_post.-1 = resid_pre.0 +
Σ_L (attn_out.L + mlp_out.L)``, and ``attn_out.L = Σ_h head_z.L[h] @ W_O[h] + b_O`` (the core's site
semantics, with ``model.output_projection(L)``). The final norm is not linear, so it is *linearised with the
run's own scale* (Gandelsman et al. 2024 style): with ``σ`` the norm's denominator computed on this run,
``norm(x) = g ⊙ P x / σ + b`` is linear in ``x`` (``P`` centres for LayerNorm, identity for RMSNorm).
Every component ``c`` then contributes ``u · c`` with ``u = P (g ⊙ d / σ)`` and ``d`` the unembedding row
of the target (minus the contrast's), and the constants ``d · b`` and the unembedding bias complete the
logit, so the terms sum exactly to the model's own logit.

Per-position head terms split a head's term over the key positions it reads:
``head_z[q, h] = Σ_k A[h, q, k] v[k, h]``. ``v`` comes from a second forward in which every layer's
pattern is the identity (so ``head_z[k, h] = v[k, h]``) while each ``attn_out`` is patched back to the clean
run's value, so every layer's input (and therefore ``v``) is the clean one.

Post-sublayer norms (Gemma 2/3, OLMo-2): ``attn_out`` is then *after* a norm of the projection's output,
so ``Σ_h head_z @ W_O + b_O`` no longer equals ``attn_out``. The block terms (``attn.L``, ``mlp.L``) stay
exact; the per-head split needs that norm linearised with its own run scale too (the same
:func:`linearise_norm` applied to the ``o_proj`` output), which uses the adapter table's name for the
post-attention norm -- the table's ``attn_post_norm``: it is frozen at this run's scale on the projection's output,
so the per-head terms (and their per-position split) pass through its linear part and still sum exactly.
A final logit soft-cap (Gemma 2) is not linear either: the decomposed quantity is then the logit before
the cap, and ``notes`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch

from lmscope.interventions.cache import Cache
from lmscope.interventions.edit import Edit
from lmscope.interventions.errors import InputError, UnsupportedArchitectureError
from lmscope.interventions.patch import Patch, to_token_coordinates
from lmscope.interventions.tolerance import is_close, max_error

from .dataset import DatasetAttribution, term_table
from .request import as_prompts, positions_per_prompt, query_columns, tokens_per_prompt

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel


@dataclass
class LinearNorm:
    """A norm frozen at one run's scale: ``norm(x) ≈ (P x) * mult + bias`` (exact on the run's own ``x``)."""

    mult: torch.Tensor  # [d] = g / σ
    bias: torch.Tensor  # [d]
    center: bool
    kind: str

    def linear(self, v: torch.Tensor) -> torch.Tensor:
        """The linear part ``(P v) * mult`` applied to vectors ``v [..., d]`` (no bias)."""
        return ((v - v.mean(-1, keepdim=True)) if self.center else v) * self.mult

    def readout(self, d: torch.Tensor) -> torch.Tensor:
        """The vector ``u`` with ``d · norm_lin(c) = u · c + d · bias`` for every component ``c``."""
        u = self.mult * d
        return u - u.mean() if self.center else u


def _eps(module: torch.nn.Module) -> float:
    for name in ("eps", "variance_epsilon", "epsilon"):
        if hasattr(module, name):
            return float(getattr(module, name))
    return 1e-5


def linearise_norm(module: torch.nn.Module, x: torch.Tensor) -> LinearNorm:
    """Freeze ``module`` (LayerNorm or RMSNorm, weight ``w`` or ``1 + w``) at its scale on ``x [d]``.

    The candidate forms are checked against the module's own output on ``x``; a norm of another form
    raises :class:`UnsupportedArchitectureError` naming it.
    """
    x = x.detach().float()
    dtype = next(module.parameters()).dtype
    with torch.no_grad():
        want = module(x.to(dtype)[None]).float()[0]
    w = getattr(module, "weight", None)
    w = torch.ones_like(x) if w is None else w.detach().float()
    b = getattr(module, "bias", None)
    b = torch.zeros_like(x) if b is None else b.detach().float()
    eps = _eps(module)
    xc = x - x.mean()
    sigma_ln = torch.sqrt(xc.pow(2).mean() + eps)
    sigma_rms = torch.sqrt(x.pow(2).mean() + eps)
    candidates = [("layernorm", w / sigma_ln, b, True), ("rmsnorm", w / sigma_rms, b, False),
                  ("rmsnorm(1+w)", (1 + w) / sigma_rms, b, False)]
    # the module rounds its output to its dtype (bfloat16: ~3 significant digits), so the forms are compared
    # within that dtype's rounding; among forms that fit, the closest wins
    errors = [max_error((xc if center else x) * mult + bias, want, dtype) for _, mult, bias, center in candidates]
    fits = [i for i, (err, allowed) in enumerate(errors) if err <= allowed]
    if fits:
        kind, mult, bias, center = candidates[min(fits, key=lambda i: errors[i][0])]
        return LinearNorm(mult, bias, center, kind)
    best = min(err / allowed for err, allowed in errors)
    raise UnsupportedArchitectureError(
        f"Cannot linearise the norm {type(module).__name__}: it is neither LayerNorm nor RMSNorm (weight w or "
        f"1+w) on this run's residual stream (the closest form misses its output by {best:.1f}x the {dtype} "
        "rounding tolerance); direct logit attribution needs its affine form.")


@dataclass
class Attribution:
    """Terms of one logit (difference). ``heads [L, H]``, ``mlp [L]``, ``attn [L]`` (whole block),
    ``attn_bias [L]``, ``embed``, ``constant`` (final-norm bias + unembedding bias);
    ``head_positions [L, H, T]`` splits each head over the key tokens ``tokens`` (None if not asked);
    ``position`` is the decomposed token's index in ``tokens``."""

    prompt: Any
    target: int
    contrast: int | None
    logit: float
    embed: float
    attn: torch.Tensor
    attn_bias: torch.Tensor
    heads: torch.Tensor
    mlp: torch.Tensor
    constant: float
    tokens: list[str]
    norm: str
    head_positions: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)
    labels: tuple[str, str | None] = ("", None)
    position: int = -1  # the decomposed token's index in ``tokens`` (-1: the last)

    @property
    def total(self) -> float:
        """Sum of the block terms: equals :attr:`logit` (up to float rounding)."""
        return float(self.embed + self.attn.sum() + self.mlp.sum() + self.constant)

    def terms(self) -> dict[str, float]:
        """Every finest-grained term by name (heads and attention biases where split, else whole blocks)."""
        return term_table(self.embed, self.attn, self.attn_bias, self.heads, self.mlp, self.constant)

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` terms of largest magnitude."""
        return sorted(self.terms().items(), key=lambda kv: -abs(kv[1]))[:k]

    def heatmap(self, path: Any = None, title: str | None = None) -> Any:
        from .plot import plot_attribution

        return plot_attribution(self, path, title)


def attribute(model: HookedModel, prompt: Any, target: Any, contrast: Any = None, per_position: bool = True, *,
              positions: int | Sequence[int] = -1, batch_size: int = 16) -> Any:
    """Direct logit attribution of ``target``'s logit (minus ``contrast``'s) at token ``positions`` (default: the
    last) of one prompt, or of each prompt of a dataset.

    ``prompt``: one string or token-id list -> an :class:`Attribution`; a list of strings or of token-id lists ->
    a :class:`~lmscope.probes.attribution.dataset.DatasetAttribution` (every prompt's terms, and their mean ±
    standard error), ``batch_size`` prompts per padded forward (the forward caches every layer's sites at every
    position, so the memory grows with it). ``target``/``contrast``: one single-token string or id for every
    prompt, or a list with one per prompt. ``positions``: the token whose logit is decomposed, one index for all or
    one per prompt, counted in each prompt's own tokens (negative from its end). ``per_position`` adds
    ``head_positions`` (one extra forward per batch). See the module docstring for the decomposition.
    """
    prompts, single = as_prompts(prompt)
    n = len(prompts)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a whole number of prompts (1 or more), got {batch_size!r}.")
    targets = [t for t in tokens_per_prompt(model, target, n, "target") if t is not None]  # (never None)
    contrasts = tokens_per_prompt(model, contrast, n, "contrast")
    wanted = positions_per_prompt(positions, n)
    notes: list[str] = []
    if per_position and "attn_pattern" not in model.available_kinds:
        per_position = False
        notes.append("per-position head terms need attn_pattern, which this architecture does not expose "
                     "(e.g. Falcon with ALiBi); the per-head terms are exact.")
    items: list[Attribution] = []
    for s in range(0, n, batch_size):
        chunk = slice(s, s + batch_size)
        items += _attribute_batch(model, prompts[chunk], targets[chunk], contrasts[chunk], wanted[chunk], s,
                                  per_position, notes)
    if single:
        return items[0]
    return DatasetAttribution(items, list(dict.fromkeys(note for a in items for note in a.notes)))


def _attribute_batch(model: HookedModel, prompts: list[Any], targets: list[int], contrasts: list[int | None],
                     positions: list[int], first: int, per_position: bool, notes: list[str]) -> list[Attribution]:
    """Every prompt's :class:`Attribution` from one padded forward (and one more for ``per_position``); ``first``
    is the dataset index of the first prompt."""
    L, n = model.n_layers, len(prompts)
    sites = ["resid_pre.0", f"resid_post.{L - 1}", "attn_out.*", "mlp_out.*", "head_z.*"]
    res = model.run(prompts, [Cache(sites + (["attn_pattern.*"] if per_position else []))], padding_side="left")
    queries = query_columns(res.batch, positions, first)
    parts = [_decompose(model, res, i, queries[i], targets[i], contrasts[i], prompts[i], list(notes))
             for i in range(n)]
    items = [a for a, _, _ in parts]
    ready = [i for i, a in enumerate(items) if not torch.isnan(a.heads).any()]
    if per_position and ready:
        split = _head_positions(model, prompts, res, [(i, queries[i], parts[i][1], parts[i][2]) for i in ready])
        for i in ready:
            items[i].head_positions = split[i]
    return items


def _decompose(model: HookedModel, res: Any, i: int, q: int, t: int, c: int | None, prompt: Any,
               notes: list[str]) -> tuple[Attribution, torch.Tensor, list[LinearNorm | None]]:
    """Prompt ``i``'s terms at column ``q`` of the batched run ``res``, with its readout vector ``u`` and its
    frozen post-attention norms (for the per-position split)."""
    L = model.n_layers
    at = lambda s: res.cache[s][i, q].float()  # noqa: E731
    W = model.unembed_weight.detach().float()
    d = W[t] - (W[c] if c is not None else 0)
    ub = getattr(model.unembed, "bias", None)
    u_bias = 0.0 if ub is None else float(ub[t].detach().float() - (ub[c].detach().float() if c is not None else 0))
    lin = linearise_norm(model.final_norm, at(f"resid_post.{L - 1}"))
    config = model.hf_model.config
    scale = model.arch.logit_scale(config) or 1.0  # Cohere multiplies the logits: every term scales with it
    u = lin.readout(d) * scale
    attn, mlp, heads, attn_bias, post_maps = _layer_terms(model, at, u, notes)
    cap = model.arch.logit_softcap(config)
    logits = res.logits[i, q].float()
    logit = float(logits[t] - (logits[c] if c is not None else 0))
    if cap:
        pre = torch.atanh((logits / cap).clamp(-1 + 1e-7, 1 - 1e-7)) * cap
        logit = float(pre[t] - (pre[c] if c is not None else 0))
        notes.append(f"final logit soft-cap {cap}: the decomposed quantity is the logit before the cap.")
    real = res.batch.attention_mask[i].bool()
    ids = res.batch.input_ids[i][real].tolist()
    tokens = [model.tokenizer.decode([x]) for x in ids] if model.tokenizer is not None else [str(x) for x in ids]
    out = Attribution(prompt, t, c, logit, float(at("resid_pre.0") @ u), attn, attn_bias, heads, mlp,
                      (float(d @ lin.bias) + u_bias) * scale, tokens, lin.kind, notes=notes,
                      labels=(tokens_label(model, t), None if c is None else tokens_label(model, c)),
                      position=q - int((~real).sum()))
    return out, u, post_maps


def _layer_terms(model: HookedModel, at: Any, u: torch.Tensor, notes: list[str]) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[LinearNorm | None]]:
    """Per layer: the attention block's and the MLP's terms, each head's and the attention bias's (NaN heads where
    ``Σ_h head_z @ W_O + b_O`` is not ``attn_out``, with a note), and the frozen post-attention norms. ``at(site)``
    reads the decomposed token's value."""
    L, H = model.n_layers, model.n_heads
    # the terms are computed on the model's device and come to the CPU in one transfer (the only other sync per
    # layer is the is_close check)
    rows: list[torch.Tensor] = []  # per layer: [attn, mlp, attn_bias, head_0 .. head_H-1]
    post_maps: list[LinearNorm | None] = []
    for layer in range(L):
        block = torch.stack([at(f"attn_out.{layer}") @ u, at(f"mlp_out.{layer}") @ u])
        w_o, b_o = model.output_projection(layer)
        per_head = torch.einsum("hd,hdm->hm", at(f"head_z.{layer}"), w_o.detach().float())
        bias = b_o.detach().float() if b_o is not None else torch.zeros(model.d_model, device=per_head.device)
        post_map = _post_attention_map(model, layer, per_head.sum(0) + bias)
        post_maps.append(post_map)
        if post_map is not None:  # sandwich norm: frozen at this run's scale, the head terms pass through it
            per_head, bias = post_map.linear(per_head), post_map.linear(bias) + post_map.bias
        if is_close(per_head.sum(0) + bias, at(f"attn_out.{layer}"), model.dtype):
            rows.append(torch.cat([block, (bias @ u)[None], per_head @ u]))
        else:
            notes.append(f"layer {layer}: attn_out is not Σ_h head_z@W_O + b_O (a post-attention norm?); "
                         "per-head terms need that norm linearised and are left NaN.")
            rows.append(torch.cat([block, block.new_zeros(1), block.new_full((H,), float("nan"))]))
    table = torch.stack(rows).cpu()  # results live on the CPU
    attn, mlp, attn_bias, heads = (table[:, i].contiguous() for i in (0, 1, 2, slice(3, None)))
    return attn, mlp, heads, attn_bias, post_maps


def tokens_label(model: HookedModel, token: int) -> str:
    return model.tokenizer.decode([token]) if model.tokenizer is not None else str(token)


def _identity_pattern(value: torch.Tensor) -> torch.Tensor:
    q, k = value.shape[-2:]
    eye = torch.eye(q, k, dtype=value.dtype, device=value.device)
    return eye.expand_as(value).contiguous()


def _post_attention_map(model: HookedModel, layer: int, projection: torch.Tensor) -> LinearNorm | None:
    """The layer's post-attention norm (Gemma 2/3, OLMo-2) frozen at this run's projection output, or None."""
    post = model.arch.attn_post_norm
    if post is None:
        return None
    return linearise_norm(model.module(f"{model.arch.layers}.{layer}.{post}"), projection)


def _head_positions(model: HookedModel, prompts: list[Any], res: Any,
                    wanted: list[tuple[int, int, torch.Tensor, list[LinearNorm | None]]]) -> dict[int, torch.Tensor]:
    """``{prompt: [L, H, T]}``: for each ``(prompt, column, u, post-attention norms)`` of ``wanted``, each head's term
    split over the prompt's key tokens (see the module docstring); one forward for every prompt of ``res``."""
    L = model.n_layers
    clean = res.cache
    values = Cache("head_z.*")
    mask = res.batch.attention_mask  # Patch values are in token coordinates: each prompt gets its own tokens back
    restore = Patch("attn_out.*", {f"attn_out.{i}": to_token_coordinates(clean[f"attn_out.{i}"], mask)
                                   for i in range(L)})
    model.run(prompts, [Edit("attn_pattern.*", _identity_pattern), restore, values], padding_side="left")
    out: dict[int, list[torch.Tensor]] = {i: [] for i, _, _, _ in wanted}
    for layer in range(L):
        w_o = model.output_projection(layer)[0].detach().float()
        for i, q, u, post_maps in wanted:
            real = res.batch.attention_mask[i].bool()
            v = values[f"head_z.{layer}"][i][real].float()  # [T, H, d_head]: v of every key token
            per_key = torch.einsum("khd,hdm->hkm", v, w_o)  # [H, T, d]
            if post_maps[layer] is not None:  # the head's vectors pass the frozen post-attention norm (linear part)
                per_key = post_maps[layer].linear(per_key)  # type: ignore[union-attr]
            pattern = clean[f"attn_pattern.{layer}"][i, :, q][:, real].float()  # [H, T] of the decomposed query
            out[i].append(pattern * (per_key @ u))
    return {i: torch.stack(rows).cpu() for i, rows in out.items()}
