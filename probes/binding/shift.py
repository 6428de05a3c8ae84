"""``BindingShift``: move a token span's binding ID by adding a per-layer, per-token vector.

The mean intervention of Feng & Steinhardt adds ``Δ`` at the slot-0 tokens and subtracts it at the slot-1
tokens of every layer. ``BindingShift(delta, layers, plus=..., minus=...)`` does that at ``resid_pre`` (or
another residual site): ``delta[l, j]`` is added at token ``start + j`` of every ``plus`` span (tokens past
the last row of ``delta`` use its last row) and subtracted on every ``minus`` span. Spans are per batch row,
``(start, stop)`` token indices without padding. Compose it after a ``Patch`` that freezes the context (the
paper overwrites every context position with cached activations + Δ, so shifts never compound across layers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from lmscope.interventions.base import Intervention
from lmscope.interventions.errors import InputError
from lmscope.interventions.positions import ForwardContext
from lmscope.interventions.sites import Site

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

RowSpans = Sequence[Sequence[Sequence[int]]]  # per row: a list of (start, stop)


def _check_spans(spans: RowSpans | None, what: str) -> list[list[tuple[int, int]]] | None:
    if spans is None:
        return None
    out = []
    for i, row in enumerate(spans):
        if not isinstance(row, (list, tuple)):
            raise InputError(f"BindingShift {what} spans: row {i} is {row!r}; give a list of (start, stop) spans "
                             "per batch row ([] for none).")
        cleaned = []
        for span in row:
            if len(span) != 2 or int(span[0]) < 0 or int(span[1]) <= int(span[0]):
                raise InputError(f"BindingShift {what} spans of row {i} must be (start, stop) with "
                                 f"0 <= start < stop; got {tuple(span)}.")
            cleaned.append((int(span[0]), int(span[1])))
        out.append(cleaned)
    return out


class BindingShift(Intervention):
    """Add ``scale * delta[layer]`` on ``plus`` spans and subtract it on ``minus`` spans (per batch row)."""

    def __init__(self, delta: torch.Tensor, layers: Sequence[int], plus: RowSpans | None = None,
                 minus: RowSpans | None = None, *, kind: str = "resid_pre", scale: float = 1.0) -> None:
        layers = [int(x) for x in layers]
        if not layers:
            raise InputError("BindingShift needs at least one layer.")
        super().__init__([f"{kind}.{layer}" for layer in layers])
        if not isinstance(delta, torch.Tensor) or not delta.is_floating_point() or delta.dim() != 3:
            raise InputError("BindingShift delta must be a float tensor [layers, span_tokens, d_model].")
        if delta.shape[0] != len(layers):
            raise InputError(f"BindingShift delta has {delta.shape[0]} layers but {len(layers)} layers are named.")
        self.delta, self.layers, self.kind, self.scale = delta.detach(), layers, kind, float(scale)
        self.plus, self.minus = _check_spans(plus, "plus"), _check_spans(minus, "minus")
        if self.plus is None and self.minus is None:
            raise InputError("BindingShift needs plus and/or minus spans.")
        if self.plus is not None and self.minus is not None and len(self.plus) != len(self.minus):
            raise InputError(f"BindingShift has {len(self.plus)} rows of plus spans and {len(self.minus)} of minus.")
        self._index = {layer: i for i, layer in enumerate(layers)}
        self._memo_ctx: ForwardContext | None = None
        self._memo: dict[Any, tuple[torch.Tensor, ...]] = {}

    @property
    def n_rows(self) -> int:
        return len(self.plus if self.plus is not None else self.minus)  # type: ignore[arg-type]

    def bind(self, model: HookedModel) -> None:
        for site in self.sites(model):
            if site.kind not in ("resid_pre", "resid_mid", "resid_post"):
                raise InputError(f"BindingShift writes residual-stream sites; {site.name} is not one.")
        if self.delta.shape[-1] != model.d_model:
            raise InputError(f"BindingShift delta has width {self.delta.shape[-1]}; the model's d_model is "
                             f"{model.d_model}.")

    def _cells(self, spans: list[list[tuple[int, int]]], ctx: ForwardContext,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, columns, span starts, token offsets) of every span token in this forward's layout."""
        ti = ctx.token_index.to(device)
        flat = [(row, a, b) for row, row_spans in enumerate(spans) for a, b in row_spans]
        if not flat:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty, empty, empty
        spec = torch.tensor(flat, dtype=torch.long, device=device)  # [spans, 3]
        tok = ti[spec[:, 0]]  # [spans, width]
        hit = (tok >= spec[:, 1:2]) & (tok < spec[:, 2:3])
        span_i, cols = hit.nonzero(as_tuple=True)
        rows = spec[span_i, 0]
        return rows, cols, spec[span_i, 1], ti[rows, cols]

    def _add(self, out: torch.Tensor, vec: torch.Tensor, spans: list[list[tuple[int, int]]], sign: float,
             ctx: ForwardContext) -> None:
        key = (id(spans), out.device)
        memo = self._memo.get(key) if self._memo_ctx is ctx else None
        if memo is None:  # the cells depend on the forward's layout only: once per forward, not per layer
            if self._memo_ctx is not ctx:
                self._memo_ctx, self._memo = ctx, {}
            memo = self._cells(spans, ctx, out.device)
            self._memo[key] = memo
        rows, cols, starts, toks = memo
        if rows.numel():
            offs = (toks - starts).clamp(max=vec.shape[0] - 1)
            out.index_put_((rows, cols), sign * vec[offs], accumulate=True)

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        if ctx.batch_size != self.n_rows:
            raise InputError(f"BindingShift has spans for {self.n_rows} rows but the batch has {ctx.batch_size}.")
        assert site.layer is not None
        vec = (self.scale * self.delta[self._index[site.layer]]).to(device=value.device, dtype=value.dtype)
        out = value.clone()
        if self.plus is not None:
            self._add(out, vec, self.plus, 1.0, ctx)
        if self.minus is not None:
            self._add(out, vec, self.minus, -1.0, ctx)
        return out

    def config(self) -> dict[str, Any]:
        return {"layers": self.layers, "kind": self.kind, "scale": self.scale,
                "plus": self.plus, "minus": self.minus}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"delta": self.delta}

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> BindingShift:
        return cls(tensors["delta"], config["layers"], config["plus"], config["minus"], kind=config["kind"],
                   scale=config["scale"])


def random_like(delta: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Random directions with the norm of each ``delta[layer, token]`` (the paper's control)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(delta.shape, generator=gen, dtype=torch.float32).to(device=delta.device, dtype=delta.dtype)
    return noise / noise.norm(dim=-1, keepdim=True) * delta.norm(dim=-1, keepdim=True)
