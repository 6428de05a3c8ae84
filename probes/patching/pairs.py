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
from lmscope.interventions.sites import Site, head_label

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

#: Positions of a sweep: None = each token on its own, ``"all"`` = every token at once, or a list of ints.
Positions = Union[None, str, Sequence[int]]
DIRECTIONS = ("denoise", "noise")
_PATCHABLE = ("embed", "resid_pre", "head_z", "attn_out", "resid_mid", "mlp_out", "resid_post")


@dataclass(frozen=True)
class Cell:
    """One patch: ``site`` (one head of ``head_z`` when ``head`` is set) at token ``position`` (None = all)."""

    site: Site
    head: int | None
    position: int | None

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


def plan_cells(model: HookedModel, sites: str | Sequence[str], positions: Positions, heads: bool,
               n_tokens: int) -> tuple[list[list[Cell]], list[str], list[int | None]]:
    """The grid of cells ``[rows][cols]``, the row labels and the column positions."""
    resolved = model.resolve(sites if isinstance(sites, str) else list(sites))
    bad = [s.name for s in resolved if s.kind not in _PATCHABLE]
    if bad:
        raise InputError(f"Cannot patch {', '.join(bad)}; patchable kinds: {', '.join(_PATCHABLE)} "
                         "(use Edit for attn_pattern).")
    if heads and not any(s.kind == "head_z" for s in resolved):
        raise InputError("heads=True patches single heads of head_z sites, but no head_z site was given.")
    cols = _columns(positions, n_tokens)
    rows: list[tuple[Site, int | None]] = []
    for s in resolved:
        rows += [(s, h) for h in range(model.n_heads)] if heads and s.kind == "head_z" else [(s, None)]
    labels = [head_label(s, h) for s, h in rows]
    return [[Cell(s, h, p) for p in cols] for s, h in rows], labels, cols


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
