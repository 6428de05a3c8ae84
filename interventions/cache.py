"""``Cache``: record site values during a forward; ``ActivationCache``: read them back by name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import torch

from .base import Intervention, decode_positions
from .errors import InputError, SiteError
from .heads import HeadSpec, bind_heads, decode_heads
from .positions import ForwardContext, PositionSpec, gather_positions
from .selection import NeuronSpec, Selects
from .sites import ATTENTION_MAP_SITES, Site

if TYPE_CHECKING:
    from .model import HookedModel


class Cache(Selects, Intervention):
    """Record the value of every site in ``sites`` (wildcards allowed, TransformerLens names too), or of every
    site whose name a function accepts (``Cache(lambda name: name.endswith("hook_z"))``, TransformerLens's
    ``names_filter``: see :func:`lmscope.interventions.tl_names.filter_sites`).

    ``positions`` keeps only the selected tokens (each row must select the same
    number, e.g. ``-1`` for the last prompt token); the default keeps the padded
    ``[batch, pos, ...]`` tensor as the model computed it. ``device``/``dtype``
    move values as they are recorded (e.g. ``device="cpu"`` to spare GPU memory).
    Values are detached unless ``detach=False``. Records from several forwards
    (generation with a KV cache) are concatenated along the position axis.

    ``heads`` records only some heads of per-head sites: head indices of the named site(s) (``q``, ``k``,
    ``v``, ``rot_q``, ``rot_k``, ``attn_scores``, ``attn_pattern``, ``head_z``, ``head_out``; KV heads on
    ``k``/``v``/``rot_k``), or (layer, head) pairs across layers without ``sites`` (``Cache(heads=[(3, 1),
    (5, 0)])``). Such a site's record has ``k`` entries on its head axis (``[batch, pos, k, d_head]``,
    ``[batch, k, query, key]`` for attention maps), the selected heads in the order given
    (``selected_heads(site)`` lists them). ``neurons`` records only some neurons of ``mlp_pre``/``mlp_post``
    (``[batch, pos, k]``; ``selected_neurons(site)``).
    """

    writes = False
    session_fields = ("_chunks", "_mask")

    def __init__(self, sites: str | list[str] | Callable[[str], bool] | None = None, positions: PositionSpec = None,
                 *, device: str | None = None, dtype: torch.dtype | None = None, detach: bool = True,
                 heads: HeadSpec = None, neurons: NeuronSpec = None) -> None:
        self.name_filter: Callable[[str], bool] | None = sites if callable(sites) else None
        spec = self._parse_selection(sites, heads, neurons, "Cache")
        super().__init__("embed" if self.name_filter is not None else spec, positions)  # a filter: see sites()
        self.device, self.dtype, self.detach = device, dtype, detach
        self._chunks: dict[Site, list[torch.Tensor]] = {}
        self._model: HookedModel | None = None

    def sites(self, model: HookedModel) -> list[Site]:
        if self.name_filter is None:
            return super().sites(model)
        from .tl_names import filter_sites

        return filter_sites(model, self.name_filter)

    def bind(self, model: HookedModel) -> None:
        if self._pairs is not None:  # validate the pairs before their layers are resolved as site names
            bind_heads(model, [], None, self._pairs)
        self._bind_selection(model, self.sites(model))
        self._model = model

    def start(self) -> None:
        self._chunks = {}
        self._mask: torch.Tensor | None = None

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> None:
        v = value.detach() if self.detach else value
        sel = None if self._selection is None else self._selection.get(site)
        if sel is not None:
            v = sel.pick(v)
        if self.positions is not None:
            if site.kind in ATTENTION_MAP_SITES:  # [b, h, q, k]: select query positions
                v = gather_positions(v.transpose(1, 2), self.positions, ctx, "Cache").transpose(1, 2)
            else:
                v = gather_positions(v, self.positions, ctx, "Cache")
        if self.device is not None or self.dtype is not None:
            v = v.to(device=self.device, dtype=self.dtype)
        self._chunks.setdefault(site, []).append(v)
        return None

    def values(self) -> dict[Site, torch.Tensor | list[torch.Tensor]]:
        out: dict[Site, torch.Tensor | list[torch.Tensor]] = {}
        for site, chunks in self._chunks.items():
            if len(chunks) == 1:
                out[site] = chunks[0]
            elif site.kind in ATTENTION_MAP_SITES:
                out[site] = chunks  # key length grows step by step: keep one tensor per forward
            else:
                out[site] = torch.cat(chunks, dim=1)
        return out

    @property
    def cache(self) -> ActivationCache:
        if self._model is None:
            raise InputError("This Cache has not been run yet.")
        return ActivationCache(self._model, self.values())

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.cache[name]

    def config(self) -> dict[str, Any]:
        if self.name_filter is not None:
            raise InputError("A Cache with a name filter function cannot be saved (a function has no JSON form); "
                             "save Cache(model.sites(...)) with the names it selects instead.")
        cfg = super().config()
        cfg["sites"] = None if self._pairs is not None else cfg.pop("site")
        cfg.pop("site", None)
        cfg.update(device=self.device, dtype=str(self.dtype).removeprefix("torch.") if self.dtype else None,
                   detach=self.detach, **self._selection_config())
        return cfg

    def __eq__(self, other: object) -> bool:
        if self.name_filter is not None or (isinstance(other, Cache) and other.name_filter is not None):
            return self is other
        return super().__eq__(other)

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        if self.name_filter is not None:
            return f"Cache(names_filter={self.name_filter!r})"
        return super().__repr__()

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Cache:
        dtype = getattr(torch, config["dtype"]) if config.get("dtype") else None
        return cls(config["sites"], decode_positions(config.get("positions")), device=config.get("device"),
                   dtype=dtype, detach=config.get("detach", True), heads=decode_heads(config.get("heads")),
                   neurons=config.get("neurons"))


class ActivationCache(Mapping[str, Any]):
    """Recorded activations, indexed by site name (negative layers work: ``cache["resid_post.-1"]``).

    TransformerLens keys work too: hook names (``cache["blocks.3.hook_resid_pre"]``) and the tuples of its
    ``ActivationCache`` (``cache["resid_pre", 3]``, ``cache["z", -1]``, ``cache["normalized", 3, "ln1"]``, the
    compact ``cache["k6"]``), read as :func:`lmscope.interventions.tl_names.get_act_name` reads them.
    ``attention_mask`` (when known) is the padded batch's mask so ``unpad`` can return one prompt's real tokens.
    """

    def __init__(self, model: HookedModel, values: Mapping[Site, Any],
                 attention_mask: torch.Tensor | None = None) -> None:
        self._model = model
        self._values = dict(values)
        self.attention_mask = attention_mask

    def _resolve(self, name: str | Site | tuple[Any, ...]) -> list[Site]:
        from .tl_names import get_act_name

        if isinstance(name, tuple):
            if not name or len(name) > 3:
                raise InputError(f"A cache key tuple is (name, layer[, layer_type]) as in TransformerLens, got "
                                 f"{name!r}.")
            return self._model.resolve(get_act_name(*name))
        try:
            return self._model.resolve(name)
        except SiteError:
            if not isinstance(name, str):
                raise
            try:  # TransformerLens's compact names ("k6", "pre5")
                short = get_act_name(name)
            except InputError:
                short = None
            if short is None or short == name:
                raise
            return self._model.resolve(short)

    def _site(self, name: str | Site | tuple[Any, ...]) -> Site:
        site = self._resolve(name)
        if len(site) != 1:
            raise SiteError(f"{name!r} names several sites; use cache.stack({name!r}) to get them together.")
        if site[0] not in self._values:
            have = ", ".join(s.name for s in sorted(self._values)) or "nothing"
            raise SiteError(f"Site {site[0].name!r} was not cached; this cache holds: {have}.")
        return site[0]

    def __getitem__(self, name: str | Site | tuple[Any, ...]) -> Any:
        return self._values[self._site(name)]

    def __contains__(self, name: object) -> bool:
        try:
            self._site(name)  # type: ignore[arg-type]
        except (SiteError, InputError):
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(s.name for s in sorted(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def stack(self, spec: str) -> torch.Tensor:
        """Stack several sites (e.g. ``"resid_post.*"``) into one tensor ``[n_sites, ...]``."""
        return torch.stack([self._values[self._site(s)] for s in self._model.resolve(spec)])

    def unpad(self, name: str | Site, row: int) -> torch.Tensor:
        """The value of one prompt at its real tokens only: ``[len_row, ...]``."""
        value = self[name]
        if self.attention_mask is None:
            return value[row]
        keep = self.attention_mask[row].bool().to(value.device)
        if value.shape[1] != keep.shape[0]:
            raise InputError("unpad needs an uncropped [batch, pos, ...] cache (positions=None).")
        return value[row][keep]


def session_cache(model: HookedModel, session: Any, attention_mask: torch.Tensor | None = None) -> ActivationCache:
    """Merge the records of every ``Cache`` of a session (a later Cache wins on a shared site)."""
    values: dict[Site, Any] = {}
    for iv in session.interventions:
        if isinstance(iv, Cache):
            values.update(iv.values())
    return ActivationCache(model, values, attention_mask)

