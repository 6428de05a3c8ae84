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
from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions.cache import Cache
from lmscope.interventions.edit import Edit
from lmscope.interventions.errors import InputError, UnsupportedArchitectureError
from lmscope.interventions.patch import Patch

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
    with torch.no_grad():
        want = module(x.to(next(module.parameters()).dtype)[None]).float()[0]
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
    tol = 1e-4 * float(want.abs().max()) + 1e-6
    for kind, mult, bias, center in candidates:
        got = (xc if center else x) * mult + bias
        if float((got - want).abs().max()) <= tol:
            return LinearNorm(mult, bias, center, kind)
    raise UnsupportedArchitectureError(
        f"Cannot linearise the norm {type(module).__name__}: it is neither LayerNorm nor RMSNorm (weight w or "
        "1+w) on this run's residual stream; direct logit attribution needs its affine form.")


@dataclass
class Attribution:
    """Terms of one logit (difference). ``heads [L, H]``, ``mlp [L]``, ``attn [L]`` (whole block),
    ``attn_bias [L]``, ``embed``, ``constant`` (final-norm bias + unembedding bias);
    ``head_positions [L, H, T]`` splits each head over the key tokens ``tokens`` (None if not asked)."""

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

    @property
    def total(self) -> float:
        """Sum of the block terms: equals :attr:`logit` (up to float rounding)."""
        return float(self.embed + self.attn.sum() + self.mlp.sum() + self.constant)

    def terms(self) -> dict[str, float]:
        """Every finest-grained term by name (heads and attention biases where split, else whole blocks)."""
        out = {"embed": float(self.embed)}
        for layer in range(self.mlp.shape[0]):
            if torch.isnan(self.heads[layer]).any():
                out[f"attn.{layer}"] = float(self.attn[layer])
            else:
                out.update({f"L{layer}H{h}": float(v) for h, v in enumerate(self.heads[layer])})
                out[f"attn_bias.{layer}"] = float(self.attn_bias[layer])
            out[f"mlp.{layer}"] = float(self.mlp[layer])
        out["constant"] = float(self.constant)
        return out

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` terms of largest magnitude."""
        return sorted(self.terms().items(), key=lambda kv: -abs(kv[1]))[:k]

    def heatmap(self, path: Any = None, title: str | None = None) -> Any:
        from .plot import plot_attribution

        return plot_attribution(self, path, title)


def _token(model: HookedModel, token: str | int) -> int:
    if isinstance(token, int) and not isinstance(token, bool):
        if not 0 <= token < model.d_vocab:
            raise InputError(f"Token id {token} is outside the vocabulary (0..{model.d_vocab - 1}).")
        return token
    if isinstance(token, str):
        return model.token_id(token)
    raise InputError(f"A target must be a single-token string or a token id, got {token!r}.")


def attribute(model: HookedModel, prompt: Any, target: str | int, contrast: str | int | None = None,
              per_position: bool = True) -> Attribution:
    """Direct logit attribution of ``target``'s logit (minus ``contrast``'s) at the prompt's last token.

    ``prompt`` is one string or one token-id list. ``per_position`` adds ``head_positions`` (one extra
    forward). See the module docstring for the exact decomposition.
    """
    if isinstance(prompt, (list, tuple)) and prompt and not isinstance(prompt[0], int):
        raise InputError("attribute takes one prompt (a string or one token-id list).")
    t = _token(model, target)
    c = None if contrast is None else _token(model, contrast)
    L, H = model.n_layers, model.n_heads
    notes: list[str] = []
    if per_position and "attn_pattern" not in model.available_kinds:
        per_position = False
        notes.append("per-position head terms need attn_pattern, which this architecture does not expose "
                     "(e.g. Falcon with ALiBi); the per-head terms are exact.")
    sites = ["resid_pre.0", f"resid_post.{L - 1}", "attn_out.*", "mlp_out.*", "head_z.*"]
    res = model.run([prompt], [Cache(sites + (["attn_pattern.*"] if per_position else []))])
    W = model.unembed_weight.detach().float()
    d = W[t] - (W[c] if c is not None else 0)
    ub = getattr(model.unembed, "bias", None)
    u_bias = 0.0 if ub is None else float(ub[t].float() - (ub[c].float() if c is not None else 0))
    last = lambda s: res.cache[s][0, -1].float()  # noqa: E731
    lin = linearise_norm(model.final_norm, last(f"resid_post.{L - 1}"))
    config = model.hf_model.config
    scale = model.arch.logit_scale(config) or 1.0  # Cohere multiplies the logits: every term scales with it
    u = lin.readout(d) * scale
    attn, mlp = torch.zeros(L), torch.zeros(L)  # results live on the CPU; the terms are computed on the model's device
    heads, attn_bias = torch.full((L, H), float("nan")), torch.zeros(L)
    post_maps: list[Any] = []
    for layer in range(L):
        attn[layer], mlp[layer] = float(last(f"attn_out.{layer}") @ u), float(last(f"mlp_out.{layer}") @ u)
        w_o, b_o = model.output_projection(layer)
        per_head = torch.einsum("hd,hdm->hm", last(f"head_z.{layer}"), w_o.detach().float())
        bias = b_o.detach().float() if b_o is not None else torch.zeros(model.d_model, device=per_head.device)
        post_map = _post_attention_map(model, layer, per_head.sum(0) + bias)
        post_maps.append(post_map)
        if post_map is not None:  # sandwich norm: frozen at this run's scale, the head terms pass through it
            per_head, bias = post_map.linear(per_head), post_map.linear(bias) + post_map.bias
        if torch.allclose(per_head.sum(0) + bias, last(f"attn_out.{layer}"), rtol=1e-4, atol=1e-4):
            heads[layer], attn_bias[layer] = (per_head @ u).cpu(), float(bias @ u)
        else:
            notes.append(f"layer {layer}: attn_out is not Σ_h head_z@W_O + b_O (a post-attention norm?); "
                         "per-head terms need that norm linearised and are left NaN.")
    cap = model.arch.logit_softcap(config)
    logits = res.logits[0, -1].float()
    logit = float(logits[t] - (logits[c] if c is not None else 0))
    if cap:
        pre = torch.atanh((logits / cap).clamp(-1 + 1e-7, 1 - 1e-7)) * cap
        logit = float(pre[t] - (pre[c] if c is not None else 0))
        notes.append(f"final logit soft-cap {cap}: the decomposed quantity is the logit before the cap.")
    ids = res.batch.input_ids[0].tolist()
    tokens = [model.tokenizer.decode([i]) for i in ids] if model.tokenizer is not None else [str(i) for i in ids]
    out = Attribution(prompt, t, c, logit, float(last("resid_pre.0") @ u), attn, attn_bias, heads, mlp,
                      (float(d @ lin.bias) + u_bias) * scale, tokens, lin.kind, notes=notes,
                      labels=(tokens_label(model, t), None if c is None else tokens_label(model, c)))
    if per_position and not torch.isnan(heads).any():
        out.head_positions = _head_positions(model, prompt, res.cache, u, post_maps)
    return out


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


def _head_positions(model: HookedModel, prompt: Any, clean: Any, u: torch.Tensor,
                    post_maps: list[LinearNorm | None]) -> torch.Tensor:
    """``[L, H, T]``: each head's term split over the key tokens it attends to (see the module docstring)."""
    L = model.n_layers
    values = Cache("head_z.*")
    restore = Patch("attn_out.*", {f"attn_out.{i}": clean[f"attn_out.{i}"] for i in range(L)})
    model.run([prompt], [Edit("attn_pattern.*", _identity_pattern), restore, values])
    out = []
    for layer in range(L):
        v = values[f"head_z.{layer}"][0].float()  # [T, H, d_head]: v of every key token
        w_o, _ = model.output_projection(layer)
        per_key = torch.einsum("khd,hdm->hkm", v, w_o.detach().float())  # [H, T, d]
        if post_maps[layer] is not None:  # the head's vectors pass the frozen post-attention norm (linear part)
            per_key = post_maps[layer].linear(per_key)  # type: ignore[union-attr]
        per_key = per_key @ u  # [H, T]
        pattern = clean[f"attn_pattern.{layer}"][0, :, -1].float()  # [H, T] of the last query
        out.append(pattern * per_key)
    return torch.stack(out).cpu()
