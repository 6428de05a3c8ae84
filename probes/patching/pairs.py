"""What a sweep patches: prompt pairs grouped by token length, the grid of cells, and the source values.

Every method (exact, loop, attribution) starts here. :func:`prepare_pairs` tokenises the clean and
corrupt prompts into :class:`Pair` groups (pairs of one token length run together, unpadded, so a
position is each prompt's own token index); :func:`plan_cells` checks the sites and positions and lays
out the ``[rows][cols]`` grid of :class:`Cell`; :func:`source_values` runs the source prompts once for
the values every cell writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence, Union

import torch

from lmscope.interventions.cache import Cache
from lmscope.interventions.errors import InputError
from lmscope.interventions.heads import HEAD_AXES, KV_KINDS, head_count
from lmscope.interventions.selection import NEURON_KINDS, group_size
from lmscope.interventions.sites import ATTENTION_MAP_SITES, LAYER_SITES, MODEL_SITES, Site, head_label

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

#: Positions of a sweep: None = each token on its own, ``"all"`` = every token at once, or a list of ints.
Positions = Union[None, str, Sequence[int]]
#: Which heads / neurons a sweep patches one at a time: False (whole sites), True (every one) or a list.
Units = Union[bool, Sequence[int]]
DIRECTIONS = ("denoise", "noise")
#: Site kinds a sweep cannot patch, and why (every other kind ``Cache`` reads is patchable).
UNPATCHABLE: dict[str, str] = {
    "logits": "patching the logits replaces what the metric reads: at the last position the patched metric is the "
              "source run's, anywhere else nothing changes",
}
_PATCHABLE = tuple(k for k in ("embed", *LAYER_SITES, "final_norm") if k not in UNPATCHABLE)
assert set(_PATCHABLE) | set(UNPATCHABLE) == set(LAYER_SITES) | set(MODEL_SITES)


@dataclass(frozen=True)
class Cell:
    """One patch: ``site`` at token ``position`` (None = all; the query position of an attention map), all of it
    or one ``head`` (a KV head on k/v/rot_k) or one ``neuron`` (mlp_pre/mlp_post)."""

    site: Site
    head: int | None
    position: int | None
    neuron: int | None = None

    @property
    def index(self) -> int | None:
        """The head or neuron this cell patches alone (None: the whole site)."""
        return self.head if self.head is not None else self.neuron

    @property
    def start_layer(self) -> int:
        return 0 if self.site.layer is None else self.site.layer

    @property
    def first_position(self) -> int:
        return 0 if self.position is None else self.position


@dataclass
class Pair:
    """``n`` prompt pairs of one token length as ids ``[n, T]``: ``base`` is patched with values from ``source``.

    ``labels`` are the token labels of the first base prompt; ``index`` the pairs' places in the dataset.
    """

    base: torch.Tensor
    source: torch.Tensor
    labels: list[str]
    index: list[int] = field(default_factory=lambda: [0])

    def row(self, i: int) -> Pair:
        """The ``i``-th pair of this group alone."""
        return Pair(self.base[i:i + 1], self.source[i:i + 1], self.labels, [self.index[i]])

    def split(self, size: int) -> list[Pair]:
        """This group in pieces of at most ``size`` pairs (one batched pass holds at most ``size`` rows)."""
        return [Pair(self.base[k:k + size], self.source[k:k + size], self.labels, self.index[k:k + size])
                for k in range(0, len(self.index), size)]


def _prompts(model: HookedModel, prompts: Any) -> list[torch.Tensor]:
    """Each prompt's real token ids (padding dropped)."""
    batch = model.tokenize(prompts)
    keep = batch.attention_mask.bool()
    return [batch.input_ids[i][keep[i]] for i in range(batch.input_ids.shape[0])]


def prepare_pairs(model: HookedModel, clean: Any, corrupt: Any, direction: str = "denoise") -> list[Pair]:
    """Tokenise clean/corrupt prompt(s) into pairs grouped by token length (first-seen order).

    Each pair must have equal token lengths; different pairs may differ.
    """
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
    cleans, corrupts = _prompts(model, clean), _prompts(model, corrupt)
    if len(cleans) != len(corrupts):
        raise InputError(f"clean has {len(cleans)} prompt(s) but corrupt has {len(corrupts)}; a sweep over a "
                         "dataset pairs clean[i] with corrupt[i], so give one corrupt prompt per clean prompt.")
    groups: dict[int, list[int]] = {}
    for i, (c, k) in enumerate(zip(cleans, corrupts)):
        if len(c) != len(k):
            which = "" if len(cleans) == 1 else f"pair {i}: "
            raise InputError(f"{which}clean has {len(c)} tokens {_token_labels(model, c, numbered=False)} but "
                             f"corrupt has {len(k)} {_token_labels(model, k, numbered=False)}; patching pairs "
                             "token i with token i, so both prompts need the same token length. Reword one (e.g. "
                             "single-token names) or pass token ids you have aligned yourself.")
        groups.setdefault(len(c), []).append(i)
    out = []
    for idx in groups.values():
        c, k = torch.stack([cleans[i] for i in idx]), torch.stack([corrupts[i] for i in idx])
        base, source = (k, c) if direction == "denoise" else (c, k)
        out.append(Pair(base, source, _token_labels(model, base[0]), idx))
    return out


def prepare_pair(model: HookedModel, clean: Any, corrupt: Any, direction: str = "denoise") -> Pair:
    """Tokenise one clean and one corrupt prompt; they must have the same token length."""
    pairs = prepare_pairs(model, clean, corrupt, direction)
    if len(pairs) != 1 or pairs[0].base.shape[0] != 1:
        raise InputError(f"This needs one prompt pair, got {sum(len(p.index) for p in pairs)}.")
    return pairs[0]


def _token_labels(model: HookedModel, ids: torch.Tensor, numbered: bool = True) -> list[str]:
    toks = [model.tokenizer.decode([int(i)]) if model.tokenizer is not None else str(int(i)) for i in ids]
    return [f"{i}:{t}" for i, t in enumerate(toks)] if numbered else toks


def plan_cells(model: HookedModel, sites: str | Sequence[str], positions: Positions, heads: Units,
               n_tokens: int, neurons: Units = False) -> tuple[list[list[Cell]], list[str], list[int | None]]:
    """The grid of cells ``[rows][cols]``, the row labels and the column positions.

    ``heads`` / ``neurons`` (True: every one; a list: those) split per-head sites into one row per head and
    ``mlp_pre``/``mlp_post`` sites into one row per neuron; other sites stay one row each."""
    resolved = model.resolve(sites if isinstance(sites, str) else list(sites))
    bad = [s for s in resolved if s.kind not in _PATCHABLE]
    if bad:
        raise InputError(f"Cannot patch {bad[0].name}: {UNPATCHABLE[bad[0].kind]}. Patchable kinds: "
                         f"{', '.join(_PATCHABLE)}.")
    head_idx = _units(model, resolved, heads, "heads", HEAD_AXES, "per-head sites (" + ", ".join(HEAD_AXES) + ")")
    neuron_idx = _units(model, resolved, neurons, "neurons", NEURON_KINDS, "mlp_pre or mlp_post sites")
    cols = _columns(positions, n_tokens)
    rows: list[tuple[Site, int | None, int | None]] = []
    for s in resolved:
        if s in head_idx:
            rows += [(s, h, None) for h in head_idx[s]]
        elif s in neuron_idx:
            rows += [(s, None, n) for n in neuron_idx[s]]
        else:
            rows.append((s, None, None))
    labels = [head_label(s, h, n) for s, h, n in rows]
    return [[Cell(s, h, p, n) for p in cols] for s, h, n in rows], labels, cols


def _units(model: HookedModel, sites: list[Site], units: Units, name: str, kinds: Any,
           what: str) -> dict[Site, list[int]]:
    """The heads (or neurons) of each site of ``kinds`` that get a row each: all of them, or the given ones."""
    if units is False:
        return {}
    mine = [s for s in sites if s.kind in kinds]
    if not mine:
        raise InputError(f"{name}= patches single {name} of {what}, but no such site was given.")
    out = {}
    for s in mine:
        size = model.d_mlp if name == "neurons" else head_count(model, s.kind)
        if units is True:
            out[s] = list(range(size))
            continue
        items = list(units) if isinstance(units, (list, tuple)) else []
        if not items or not all(isinstance(u, int) and not isinstance(u, bool) for u in items):
            raise InputError(f"{name} must be True, False or a non-empty list of ints, got {units!r}.")
        bad = [u for u in items if not -size <= u < size]
        if bad:
            kv = " KV" if name == "heads" and s.kind in KV_KINDS and size != model.n_heads else ""
            raise InputError(f"{name[:-1].capitalize()} {bad[0]} is out of range for {s.name}: it has {size}{kv} "
                             f"{name} (valid 0..{size - 1}, or -{size}..-1 from the end).")
        out[s] = list(dict.fromkeys(u % size for u in items))
    return out


def _columns(positions: Positions, n_tokens: int) -> list[int | None]:
    if positions is None:
        return list(range(n_tokens))
    if positions == "all":
        return [None]
    if isinstance(positions, (str, int)) or isinstance(positions, bool):
        raise InputError(f"positions must be None (each token), 'all' (every token at once) or a list of ints, "
                         f"got {positions!r}.")
    out: list[int | None] = []
    for p in positions:
        if isinstance(p, bool) or not isinstance(p, int) or not -n_tokens <= p < n_tokens:
            raise InputError(f"Position {p!r} is outside the prompt's {n_tokens} tokens "
                             f"(valid: 0..{n_tokens - 1} or -{n_tokens}..-1).")
        out.append(p % n_tokens)
    if not out:
        raise InputError("positions is an empty list; pass None for every token.")
    return out


def col_labels(pair: Pair, cols: list[int | None]) -> list[str]:
    """Column labels of a single-pair map: the token label at each position, or ``all``."""
    return ["all" if p is None else pair.labels[p] for p in cols]


def source_values(model: HookedModel, pair: Pair, sites: Sequence[Site]) -> tuple[dict[Site, torch.Tensor],
                                                                                torch.Tensor]:
    """Site values of the source runs (``[n, T, ...]`` each) and their last-position logits ``[n, vocab]``."""
    cache = Cache([s.name for s in sites])
    result = model.run(pair.source, [cache])
    return {s: result.cache[s.name] for s in sites}, result.last_logits()


def cell_value(c: Cell, value: torch.Tensor) -> torch.Tensor:
    """The part of one prompt's site value (``[T, ...]``; ``[heads, T, T]`` for attention maps) that cell ``c``
    writes: its position (the query row of a map) and then its head or neuron."""
    if c.site.kind in ATTENTION_MAP_SITES:
        v = value if c.position is None else value[:, c.position]
        return v if c.head is None else v[c.head]
    v = value if c.position is None else value[c.position]
    return v if c.index is None else v.select(1 if c.position is None else 0, c.index)


def kv_group_notes(model: HookedModel, cells: Sequence[Cell]) -> list[str]:
    """A note for sweeps with KV-head rows on a grouped-query model: which query heads each such row touched."""
    r = group_size(model)
    kinds = [k for k in KV_KINDS if any(c.head is not None and c.site.kind == k for c in cells)]
    if r == 1 or not kinds:
        return []
    return [f"Rows of {'/'.join(kinds)} are KV heads (grouped-query attention, {r} query heads per KV head): "
            f"patching KV head g changes query heads {r}g..{r}g+{r - 1} together (e.g. ':h1' touched query heads "
            f"{', '.join(str(r + i) for i in range(r))})."]
