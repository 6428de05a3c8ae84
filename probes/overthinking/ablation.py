"""Head ablations at the final token: the interventions.

:class:`HeadQKVAblate` is the authors' variant (overthinking_the_truth): zero a head's query, key and
value slices at the final token. With a zero query every score of that row is 0, so the softmax spreads
``1/n`` over the ``n`` real tokens the final token sees (itself included); the zero key only matters to that
same query (it is the last token), and the zero value removes the final token's own share. The intervention
writes exactly that into ``attn_pattern.L``: the final row of each chosen head becomes ``1/n`` on every other
visible real token and ``0`` on the final token itself (the row sums to ``(n - 1) / n``). It acts per *query*
head: on grouped-query models the shared key/value heads of the group's other heads are left alone (zeroing
a shared k/v slice by hand would touch them too). Zero and mean ablation of the head output use the core's
``Ablate`` on ``head_z.L`` (:func:`head_ablation` builds either kind).

:class:`RowHeadAblation` and :class:`ColumnHeadAblation` run ``C`` such configurations in one final-token
forward, along the batch (rows) or along the query axis (columns); the runner in :mod:`.final_token` builds
them. They are internal (``Intervention.internal``): their configs only mean something inside that runner's
forward, so they are neither registered for loading nor saveable. (layer, head) pairs are checked by the
core's :mod:`lmscope.interventions.heads` (their shape when built, their range against the model at bind).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from lmscope.interventions.ablate import Ablate
from lmscope.interventions.base import Intervention
from lmscope.interventions.errors import InputError
from lmscope.interventions.heads import bind_heads, head_mask, parse_pairs
from lmscope.interventions.positions import ForwardContext, position_mask
from lmscope.interventions.sites import Site

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel

Heads = Sequence[tuple[int, int]]
METHODS = ("zero", "mean", "qkv")
#: A batchable configuration: the heads to ablate at the final token and the method (no heads = no ablation).
AblationSpec = tuple[Heads, str]
#: The site kind each method writes.
_METHOD_SITE = {"zero": "head_z", "mean": "head_z", "qkv": "attn_pattern"}


def check_method(method: Any, where: str = "") -> str:
    """``method`` if it is one of :data:`METHODS`; else an InputError (prefixed by ``where``)."""
    if method not in METHODS:
        raise InputError(f"{where}Unknown ablation {method!r}; methods: {', '.join(METHODS)}.")
    return str(method)


def _heads_by_layer(model: HookedModel, pairs: list[tuple[int, int]]) -> dict[int | None, list[int]]:
    """``pairs`` checked against ``model`` by the core (:func:`~lmscope.interventions.heads.bind_heads`): the
    non-negative head indices of each layer, a layer named twice (``-1`` and ``n_layers - 1``) merged."""
    return {site.layer: hs for site, hs in (bind_heads(model, [], None, pairs) or {}).items()}


class HeadQKVAblate(Intervention):
    """Zero the q/k/v slices of ``heads`` (``[(layer, head), ...]``) at each prompt's final token.

    Written as the equivalent attention pattern (see the module docstring); composes with any other
    intervention and saves/loads like them. Only the last prompt token is supported: zeroing k or v at
    an earlier token would also change later queries, which a pattern edit of one row cannot express.
    """

    def __init__(self, heads: Heads) -> None:
        self.heads: list[tuple[int, int]] = parse_pairs(heads, "HeadQKVAblate")
        super().__init__([f"attn_pattern.{layer}" for layer in sorted({layer for layer, _ in self.heads})], -1)

    def bind(self, model: HookedModel) -> None:
        self._resolved = _heads_by_layer(model, self.heads)
        super().bind(model)

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        q_sel = position_mask(-1, ctx).to(value.device)  # [batch, q]
        chosen = head_mask(self._resolved[site.layer], value.shape[1], value.device)  # [heads]
        return self.pattern_edit(value, ctx, q_sel[:, None, :, None] & chosen[None, :, None, None])

    @staticmethod
    def pattern_edit(value: torch.Tensor, ctx: ForwardContext, mask: torch.Tensor) -> torch.Tensor:
        """``value`` (a pattern ``[batch, heads, q, keys]``) with the ``mask``-ed rows as under a zero q/k/v at
        that query: ``1/n`` on each visible real key other than the query itself (``n`` counts the visible real
        keys, the query's own included) and ``0`` on the query's own column (its value is zero)."""
        keys = value.shape[-1]  # every column seen so far (cache included)
        cols = torch.arange(keys, device=value.device)
        q_cols = torch.arange(ctx.offset, ctx.offset + ctx.seq_len, device=value.device)
        real_k = ctx.attention_mask[:, :keys].to(value.device).bool()  # [batch, keys]
        visible = real_k[:, None, :] & (cols[None, None, :] <= q_cols[None, :, None])  # [batch, q, keys]
        uniform = visible / visible.sum(-1, keepdim=True).clamp(min=1)
        uniform = uniform.masked_fill(cols[None, None, :] == q_cols[None, :, None], 0.0)  # v zeroed at the query
        return torch.where(mask, uniform[:, None].to(value.dtype), value)

    def config(self) -> dict[str, Any]:
        return {"heads": [list(h) for h in self.heads]}

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> HeadQKVAblate:
        return cls([tuple(h) for h in config["heads"]])


def head_ablation(heads: Heads, method: str) -> list[Intervention]:
    """Interventions that ablate ``heads`` at the final token: ``zero``/``mean`` on ``head_z`` (the core's
    ``Ablate``; ``mean`` averages the current forward's real tokens, i.e. the batch's final positions in a
    final-token forward) or the authors' ``qkv`` variant."""
    if check_method(method) == "qkv":
        return [HeadQKVAblate(heads)]
    return [Ablate(heads=parse_pairs(heads, "head_ablation"), how=method, positions=-1)]


def _config_heads(heads: Any, c: int) -> list[tuple[int, int]]:
    """Configuration ``c``'s heads as pairs; an empty list or tuple is a configuration that ablates nothing."""
    if isinstance(heads, (list, tuple)) and not heads:
        return []
    return parse_pairs(heads, f"Ablation configuration {c}")


class RowHeadAblation(Intervention):
    """Internal: per-row head ablation at the final token: row ``b * C + c`` of the batch ablates ``configs[c]``.

    ``configs`` is a list of ``(heads, method)`` (:data:`AblationSpec`); the batch holds ``B`` prompts, each
    repeated over the ``C`` configurations (``repeat_interleave`` order). ``zero`` and ``mean`` act on
    ``head_z.L`` like the core's ``Ablate`` (``mean``: the mean over the real tokens of that configuration's
    own ``B`` rows, the same operation ``Ablate`` does on a one-configuration batch); ``qkv`` writes the
    pattern of :class:`HeadQKVAblate` into the chosen rows' heads.
    """

    internal = True

    def __init__(self, configs: Sequence[AblationSpec]) -> None:
        if not configs:
            raise InputError(f"{type(self).__name__} needs at least one (heads, method) configuration.")
        self.configs: list[tuple[list[tuple[int, int]], str]] = [
            (_config_heads(heads, c), check_method(method)) for c, (heads, method) in enumerate(configs)]
        names = sorted({f"{_METHOD_SITE[m]}.{layer}" for hs, m in self.configs for layer, _ in hs})
        if not names:
            raise InputError(f"{type(self).__name__}: no configuration names a head; nothing to ablate.")
        super().__init__(names, -1)

    def bind(self, model: HookedModel) -> None:
        n_conf, n = len(self.configs), model.n_heads
        self._masks: dict[tuple[str, int | None], torch.Tensor] = {}  # (method, layer) -> [C, heads] bool
        for c, (heads, method) in enumerate(self.configs):
            for layer, hs in _heads_by_layer(model, heads).items():
                key = (method, layer)
                if key not in self._masks:
                    self._masks[key] = torch.zeros(n_conf, n, dtype=torch.bool)
                self._masks[key][c, hs] = True
        super().bind(model)

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        n_conf = len(self.configs)
        if ctx.batch_size % n_conf:
            raise InputError(f"RowHeadAblation has {n_conf} configurations; the batch of {ctx.batch_size} rows "
                             "is not prompts x configurations.")
        n_prompts = ctx.batch_size // n_conf
        q_sel = position_mask(-1, ctx).to(value.device)  # [rows, q]
        if site.kind == "attn_pattern":
            rows = self._masks[("qkv", site.layer)].to(value.device).repeat(n_prompts, 1)  # [rows, heads]
            return HeadQKVAblate.pattern_edit(value, ctx, q_sel[:, None, :, None] & rows[:, :, None, None])
        out = value
        zero = self._masks.get(("zero", site.layer))
        if zero is not None:
            mask = q_sel[:, :, None, None] & zero.to(value.device).repeat(n_prompts, 1)[:, None, :, None]
            out = torch.where(mask, torch.zeros_like(out), out)
        mean = self._masks.get(("mean", site.layer))
        if mean is not None:
            real = ctx.real.to(value.device).view(n_prompts, n_conf, -1)
            grid = value.view(n_prompts, n_conf, *value.shape[1:])
            repl = torch.zeros_like(grid)
            for c in mean.any(1).nonzero(as_tuple=True)[0].tolist():
                repl[:, c] = grid[:, c][real[:, c]].mean(0)  # Ablate's mean over this configuration's rows
            mask = q_sel[:, :, None, None] & mean.to(value.device).repeat(n_prompts, 1)[:, None, :, None]
            out = torch.where(mask, repl.view_as(value), out)
        return out

    def config(self) -> dict[str, Any]:
        return {"configs": [[[list(h) for h in hs], m] for hs, m in self.configs]}


class ColumnHeadAblation(RowHeadAblation):
    """Internal: the configurations along the *query* axis. The forward holds each prompt's final token ``C``
    times (same position id; a 4D mask lets copy ``c`` see the prompt's prefix and itself only), and column
    ``c`` ablates ``configs[c]``: the prefix cache is shared by the ``C`` copies instead of repeated per row.
    ``prefix_mask`` (``[prompts, prefix]``, 1 = real token) gives the keys the ``qkv`` pattern spreads over."""

    def __init__(self, configs: Sequence[AblationSpec], prefix_mask: torch.Tensor) -> None:
        super().__init__(configs)
        self.prefix_mask = prefix_mask

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        n_conf = len(self.configs)
        if site.kind == "attn_pattern":  # [prompts, heads, C, prefix + C]
            prefix = self.prefix_mask.to(device=value.device, dtype=value.dtype)
            if value.shape[2] != n_conf or value.shape[3] != prefix.shape[1] + n_conf:
                raise InputError("ColumnHeadAblation runs only in its own final-token forward.")
            # a zero q/k/v at the final token: with p real prefix tokens it sees n = p + 1 real tokens (itself
            # included); weight 1/n on each real prefix token, 0 on padding, on itself and on the other copies
            uniform = torch.cat([prefix / (prefix.sum(1, keepdim=True) + 1), prefix.new_zeros(len(prefix), n_conf)],
                                1)
            cols = self._masks[("qkv", site.layer)].to(value.device).T  # [heads, C]
            return torch.where(cols[None, :, :, None], uniform[:, None, None, :], value)
        if value.shape[1] != n_conf:  # head_z: [prompts, C, heads, d_head]
            raise InputError("ColumnHeadAblation runs only in its own final-token forward.")
        out = value
        zero = self._masks.get(("zero", site.layer))
        if zero is not None:
            out = torch.where(zero.to(value.device)[None, :, :, None], torch.zeros_like(out), out)
        mean = self._masks.get(("mean", site.layer))
        if mean is not None:  # each configuration's mean over its own rows: the prompts' final tokens
            out = torch.where(mean.to(value.device)[None, :, :, None], value.mean(0, keepdim=True), out)
        return out
