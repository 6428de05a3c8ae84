"""Decoding prompts into prediction trajectories (the implementation of :meth:`Lens.decode`).

**One** forward with a ``Cache`` on the needed reading sites, then the selected (prompt, position)
cells are projected to the vocabulary reading by reading in chunks of cells, so peak memory holds
one ``[chunk, vocab]`` block per step rather than ``n_readings x tokens x vocab``. KL and entropy
come from :mod:`lmscope.lens.metrics`; positions follow :func:`lmscope.interventions.positions.prompt_indices`
(plus ``"last"``, the last token of each prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions.errors import InputError
from lmscope.interventions.positions import prompt_indices

from .metrics import entropy_from_logprobs, kl_from_logprobs, log_probs, target_stats
from .trajectory import Trajectory, TrajectoryBatch

if TYPE_CHECKING:
    from lmscope.interventions.inputs import Batch

    from .lenses import Lens

#: Upper bound on elements of one [cells, vocab] block during decoding (float32: 4 MiB), so decoding
#: adds a few such blocks on top of the plain forward whatever the prompt length.
CHUNK_ELEMENTS = 1 << 20
#: With fewer cells than this, several readings share one projection of at least this many rows
#: (speed: each projection reads the whole unembedding, and short prompts make few rows per reading).
MIN_ROWS = 64


@torch.no_grad()
def decode_trajectories(lens: Lens, prompts: Any, top_k: int = 5, targets: Any = None, positions: Any = "all",
                        layers: Any = None) -> Trajectory | TrajectoryBatch:
    """Implementation of :meth:`Lens.decode` (see there)."""
    model = lens.model
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= model.d_vocab:
        raise InputError(f"top_k must be an int in 1..{model.d_vocab}, got {top_k!r}.")
    if isinstance(prompts, str) and not prompts:
        raise InputError("The prompt is empty; give at least one token of text.")
    idx = lens.select_readings(layers)
    target_ids = _target_ids(lens, targets)
    batch = model.tokenize(prompts)
    cells = _Cells.select(batch, positions)
    final_logits, hidden = _forward(lens, batch, cells, [lens.readings[i] for i in idx])
    out = _Outputs.empty(len(idx), cells.n, top_k, len(target_ids))
    _decode_cells(lens, idx, hidden, final_logits, torch.tensor(target_ids, dtype=torch.long), out)
    trajectories = _assemble(lens, batch, cells, [lens.readings[i] for i in idx], target_ids, out)
    return trajectories[0] if _is_single(prompts) else TrajectoryBatch(trajectories)


@dataclass
class _Cells:
    """The (prompt, position) cells to decode, flattened: row ``b`` has token positions ``rows[b]``."""

    rows: list[list[int]]
    lengths: list[int]
    width: int
    last_only: bool
    full_single: bool

    @classmethod
    def select(cls, batch: Batch, positions: Any) -> _Cells:
        lengths = batch.lengths.tolist()
        if isinstance(positions, str) and positions not in ("all", "last", "prompt"):
            raise InputError(f"positions must be 'all', 'last', an int, a list of ints or a slice, got {positions!r}.")
        last_only = positions == "last"
        rows = [[n - 1] for n in lengths] if last_only else prompt_indices(positions, lengths)
        full = len(lengths) == 1 and (positions is None or (isinstance(positions, str) and positions == "all"))
        return cls(rows, lengths, int(batch.input_ids.shape[1]), last_only, full)

    @property
    def n(self) -> int:
        return sum(len(ps) for ps in self.rows)

    def batch_index(self) -> torch.Tensor:
        return torch.tensor([b for b, ps in enumerate(self.rows) for _ in ps], dtype=torch.long)

    def column(self) -> torch.Tensor:
        """Column of each cell in the padded batch (left padding: token t of row b is at width - len + t)."""
        return torch.tensor([self.width - self.lengths[b] + p for b, ps in enumerate(self.rows) for p in ps],
                            dtype=torch.long)


def _forward(lens: Lens, batch: Batch, cells: _Cells, sites: list[str]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward; the model's logits ``[cells, V]`` and each reading's hidden states ``[cells, d]``."""
    from lmscope.interventions import Cache

    model = lens.model
    cache = Cache(sites, positions=-1 if cells.last_only else None)
    result = model.run(batch, [cache])
    acts = cache.cache
    if cells.full_single:  # every column of one row: views, no copies
        return result.logits[0], {name: acts[name][0] for name in sites}
    dev = model.device
    b_idx, col = cells.batch_index().to(dev), cells.column().to(dev)
    c_idx = torch.zeros_like(col) if cells.last_only else col  # with last_only the cache kept one column
    return result.logits[b_idx, col], {name: acts[name][b_idx, c_idx] for name in sites}


@dataclass
class _Outputs:
    """Per-cell results, CPU tensors ``[reading, cell, ...]`` (final_* are ``[cell, top_k]``)."""

    top_ids: torch.Tensor
    top_probs: torch.Tensor
    entropy: torch.Tensor
    kl: torch.Tensor
    target_rank: torch.Tensor
    target_prob: torch.Tensor
    final_ids: torch.Tensor
    final_probs: torch.Tensor

    @classmethod
    def empty(cls, n_r: int, n_cells: int, top_k: int, n_t: int) -> _Outputs:
        return cls(top_ids=torch.zeros(n_r, n_cells, top_k, dtype=torch.long),
                   top_probs=torch.zeros(n_r, n_cells, top_k), entropy=torch.zeros(n_r, n_cells),
                   kl=torch.zeros(n_r, n_cells), target_rank=torch.zeros(n_r, n_cells, n_t, dtype=torch.long),
                   target_prob=torch.zeros(n_r, n_cells, n_t), final_ids=torch.zeros(n_cells, top_k, dtype=torch.long),
                   final_probs=torch.zeros(n_cells, top_k))


def _decode_cells(lens: Lens, idx: list[int], hidden: dict[str, torch.Tensor], final_logits: torch.Tensor,
                  targets: torch.Tensor, out: _Outputs) -> None:
    """Fill ``out`` chunk of cells by chunk; short prompts decode several readings in one projection
    (a pass over the unembedding is memory-bound), long prompts small cell chunks of one reading."""
    n_cells, n_r, vocab = final_logits.shape[0], len(idx), lens.model.d_vocab
    budget = max(1, CHUNK_ELEMENTS // vocab)
    if n_cells < MIN_ROWS:  # few cells: the blocks stay small, batch readings for speed
        budget = max(budget, MIN_ROWS)
    chunk = min(n_cells, budget)
    group = max(1, budget // chunk)
    top_k = out.top_ids.shape[-1]
    targets = targets.to(final_logits.device)
    for s in range(0, n_cells, chunk):
        sl = slice(s, min(s + chunk, n_cells))
        target = target_stats(final_logits[sl])
        v, ids = target.p.topk(top_k, dim=-1)
        out.final_ids[sl], out.final_probs[sl] = ids.cpu(), v.cpu()
        for g in range(0, n_r, group):
            rs = list(range(g, min(g + group, n_r)))
            h = torch.cat([lens.translate(hidden[lens.readings[idx[r]]][sl], idx[r]) for r in rs])
            logq = log_probs(lens.model.decode_hidden(h.to(lens.model.dtype))).view(len(rs), -1, vocab)
            _record(out, slice(g, g + len(rs)), sl, logq, target, targets)


def _record(out: _Outputs, rsl: slice, sl: slice, logq: torch.Tensor, target: Any, targets: torch.Tensor) -> None:
    """Top-k, KL, entropy and target rank/probability of lens log-probs ``[readings, cells, V]``."""
    v, ids = logq.topk(out.top_ids.shape[-1], dim=-1)
    out.top_ids[rsl, sl], out.top_probs[rsl, sl] = ids.cpu(), v.exp().cpu()
    out.kl[rsl, sl] = kl_from_logprobs(target, logq).cpu()
    out.entropy[rsl, sl] = entropy_from_logprobs(logq).cpu()
    if targets.numel():
        lt = logq[:, :, targets]  # [G, n, T]
        out.target_prob[rsl, sl] = lt.exp().cpu()
        out.target_rank[rsl, sl] = ((logq[:, :, None, :] > lt[..., None]).sum(-1) + 1).cpu()


def _assemble(lens: Lens, batch: Batch, cells: _Cells, sites: list[str], target_ids: list[int],
              out: _Outputs) -> list[Trajectory]:
    """One :class:`Trajectory` per prompt from the flat per-cell results."""
    names = _TokenNames(lens.model.tokenizer)
    texts = batch.texts
    n_t = len(target_ids)
    trajectories: list[Trajectory] = []
    start = 0
    for b, ps in enumerate(cells.rows):
        sl = slice(start, start + len(ps))
        start += len(ps)
        ids_row = batch.input_ids[b, cells.width - cells.lengths[b]:].tolist()
        tids = out.top_ids[:, sl]
        trajectories.append(Trajectory(
            prompt=texts[b] if texts else None, lens=lens.describe(), readings=sites, positions=ps,
            input_ids=ids_row, input_tokens=[names(i) for i in ids_row], top_ids=tids,
            top_probs=out.top_probs[:, sl], top_tokens=[[[names(i) for i in cell] for cell in row]
                                                         for row in tids.tolist()],
            entropy=out.entropy[:, sl], kl=out.kl[:, sl], final_top_ids=out.final_ids[sl],
            final_top_probs=out.final_probs[sl], final_tokens=[names(int(i)) for i in out.final_ids[sl, 0]],
            targets=target_ids, target_tokens=[names(i) for i in target_ids],
            target_rank=out.target_rank[:, sl] if n_t else None, target_prob=out.target_prob[:, sl] if n_t else None))
    return trajectories


def _is_single(prompts: Any) -> bool:
    if isinstance(prompts, str):
        return True
    if isinstance(prompts, torch.Tensor):
        return prompts.dim() == 1
    return isinstance(prompts, (list, tuple)) and len(prompts) > 0 and all(
        isinstance(x, int) and not isinstance(x, bool) for x in prompts)


def _target_ids(lens: Lens, targets: Any) -> list[int]:
    if targets is None:
        return []
    if isinstance(targets, (str, int)):
        targets = [targets]
    ids = []
    for t in targets:
        if isinstance(t, str):
            ids.append(lens.model.token_id(t))
        elif isinstance(t, int) and not isinstance(t, bool):
            if not 0 <= t < lens.model.d_vocab:
                raise InputError(f"Target id {t} outside the vocabulary (0..{lens.model.d_vocab - 1}).")
            ids.append(t)
        else:
            raise InputError(f"Targets must be single-token strings or token ids, got {t!r}.")
    return ids


class _TokenNames:
    """Memoised id -> string (the tokenizer's decode, or the id itself without a tokenizer)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.memo: dict[int, str] = {}

    def __call__(self, i: int) -> str:
        s = self.memo.get(i)
        if s is None:
            s = self.tok.decode([i]) if self.tok is not None else str(i)
            self.memo[i] = s
        return s
