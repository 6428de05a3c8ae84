"""Prediction trajectories: what a lens reads at every reading x position of a prompt.

:func:`decode_trajectories` runs **one** forward with a ``Cache`` on the needed
reading sites, then projects to the vocabulary reading by reading over chunks of
token cells, so peak memory holds one ``[chunk, vocab]`` block per step rather than
``n_readings x tokens x vocab``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from lmscope.interventions.errors import InputError

if TYPE_CHECKING:
    from .lenses import Lens

#: Upper bound on elements of one [cells, vocab] block during decoding (float32: 4 MiB), so decoding
#: adds a few such blocks on top of the plain forward whatever the prompt length.
CHUNK_ELEMENTS = 1 << 20
#: With fewer cells than this, several readings share one projection of at least this many rows
#: (speed: each projection reads the whole unembedding, and short prompts make few rows per reading).
MIN_ROWS = 64


def show_token(tok: str, width: int | None = None) -> str:
    """A token as a quoted, escaped string (leading spaces stay visible), cut to ``width`` characters."""
    s = json.dumps(tok, ensure_ascii=False)
    if width is not None and len(s) > width:
        s = s[: max(1, width - 2)] + "…" + s[-1]
    return s


@dataclass
class Trajectory:
    """Lens predictions of one prompt. Arrays are CPU tensors indexed ``[reading, position, ...]``.

    - ``readings``: site names (rows), ``positions``: token indices (columns), ``tokens``: input token strings
      at those positions, ``input_ids``/``input_tokens``: the whole prompt.
    - ``top_ids``/``top_probs``/``top_tokens``: top-k of the lens distribution.
    - ``entropy``: entropy of the lens distribution (nats); ``kl``: KL(model output || lens) (nats).
    - ``targets``/``target_tokens``: tracked token ids; ``target_rank`` (1 = top token) and ``target_prob``
      are ``[reading, position, n_targets]``.
    - ``final_top_ids``/``final_top_probs``/``final_tokens``: the model's own output (top-k, top-1 string).
    """

    prompt: str | None
    lens: str
    readings: list[str]
    positions: list[int]
    input_ids: list[int]
    input_tokens: list[str]
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    top_tokens: list[list[list[str]]]
    entropy: torch.Tensor
    kl: torch.Tensor
    final_top_ids: torch.Tensor
    final_top_probs: torch.Tensor
    final_tokens: list[str] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    target_tokens: list[str] = field(default_factory=list)
    target_rank: torch.Tensor | None = None
    target_prob: torch.Tensor | None = None

    @property
    def tokens(self) -> list[str]:
        """Input token strings at the decoded positions (column labels)."""
        return [self.input_tokens[p] for p in self.positions]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.readings), len(self.positions)

    # -- export ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (lists of floats/ints/strings)."""
        d: dict[str, Any] = {
            "prompt": self.prompt, "lens": self.lens, "readings": self.readings, "positions": self.positions,
            "input_ids": self.input_ids, "input_tokens": self.input_tokens, "tokens": self.tokens,
            "top_ids": self.top_ids.tolist(), "top_probs": self.top_probs.tolist(), "top_tokens": self.top_tokens,
            "entropy": self.entropy.tolist(), "kl": self.kl.tolist(),
            "final_top_ids": self.final_top_ids.tolist(), "final_top_probs": self.final_top_probs.tolist(),
            "final_tokens": self.final_tokens, "targets": self.targets, "target_tokens": self.target_tokens,
            "target_rank": None if self.target_rank is None else self.target_rank.tolist(),
            "target_prob": None if self.target_prob is None else self.target_prob.tolist(),
        }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        """Inverse of :meth:`to_dict`."""
        t = lambda key, dtype: None if d.get(key) is None else torch.tensor(d[key], dtype=dtype)  # noqa: E731
        r = lambda key, dtype: torch.tensor(d[key], dtype=dtype)  # noqa: E731  (required fields)
        return cls(prompt=d["prompt"], lens=d["lens"], readings=list(d["readings"]), positions=list(d["positions"]),
                   input_ids=list(d["input_ids"]), input_tokens=list(d["input_tokens"]),
                   top_ids=r("top_ids", torch.long), top_probs=r("top_probs", torch.float32),
                   top_tokens=d["top_tokens"], entropy=r("entropy", torch.float32), kl=r("kl", torch.float32),
                   final_top_ids=r("final_top_ids", torch.long), final_top_probs=r("final_top_probs", torch.float32),
                   final_tokens=list(d.get("final_tokens") or []),
                   targets=list(d.get("targets") or []), target_tokens=list(d.get("target_tokens") or []),
                   target_rank=t("target_rank", torch.long), target_prob=t("target_prob", torch.float32))

    def to_json(self, path: str | os.PathLike[str] | None = None, indent: int | None = None) -> str:
        """The trajectory as JSON text; also written (atomically) to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)
        if path is not None:
            from lmscope.interventions.artifacts import atomic_write_text

            atomic_write_text(path, text)
        return text

    def table(self, width: int = 14, show: str = "prob") -> str:
        """Readable text table: readings down, positions across, each cell the top token and its probability.

        ``show="kl"`` prints KL (nats) instead of the probability. Tokens are JSON-quoted (spaces visible).
        """
        if show not in ("prob", "kl"):
            raise InputError(f"show must be 'prob' or 'kl', got {show!r}.")
        head = ["reading"] + [f"{p}:{show_token(t, width - 4)}" for p, t in zip(self.positions, self.tokens)]
        rows = [head]
        for r, name in enumerate(self.readings):
            cells = [name]
            for c in range(len(self.positions)):
                val = float(self.top_probs[r, c, 0]) if show == "prob" else float(self.kl[r, c])
                cells.append(f"{show_token(self.top_tokens[r][c][0], width - 5)} {val:.2f}")
            rows.append(cells)
        rows.append(["(output)"] + [f"{show_token(self._final_token(c), width - 5)} "
                                    f"{float(self.final_top_probs[c, 0]):.2f}" for c in range(len(self.positions))])
        widths = [max(len(row[j]) for row in rows) for j in range(len(head))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        title = f"{self.lens} lens" + (f": {show_token(self.prompt, 60)}" if self.prompt else "")
        return title + "\n" + "\n".join(lines)

    def _final_token(self, c: int) -> str:
        return self.final_tokens[c] if self.final_tokens else str(int(self.final_top_ids[c, 0]))

    def __str__(self) -> str:
        return self.table()

    def plot(self, path: str | os.PathLike[str], color: str = "prob", title: str | None = None) -> Path:
        """Write a heatmap (readings x positions; text = top token, colour = top-1 probability or KL).

        ``.png`` (also ``.pdf``/``.svg``) uses matplotlib (Agg); ``.html`` uses plotly with plotly.js embedded,
        so the page works offline. The first reading is drawn at the bottom (depth grows upwards).
        """
        from .plot import plot_trajectory

        return plot_trajectory(self, path, color=color, title=title)


class TrajectoryBatch(Sequence[Trajectory]):
    """Trajectories of several prompts (``batch[i]`` is prompt i)."""

    def __init__(self, trajectories: list[Trajectory]) -> None:
        self.trajectories = trajectories

    def __getitem__(self, i: int) -> Trajectory:  # type: ignore[override]
        return self.trajectories[i]

    def __len__(self) -> int:
        return len(self.trajectories)

    def __iter__(self) -> Iterator[Trajectory]:
        return iter(self.trajectories)

    def to_dict(self) -> dict[str, Any]:
        return {"trajectories": [t.to_dict() for t in self.trajectories]}

    def to_json(self, path: str | os.PathLike[str] | None = None, indent: int | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)
        if path is not None:
            from lmscope.interventions.artifacts import atomic_write_text

            atomic_write_text(path, text)
        return text

    def table(self, **kw: Any) -> str:
        return "\n\n".join(t.table(**kw) for t in self.trajectories)

    def plot(self, path: str | os.PathLike[str], color: str = "prob") -> list[Path]:
        """One file per prompt: ``path`` itself for one prompt, else ``stem_<i>.suffix``."""
        p = Path(path)
        if len(self) == 1:
            return [self[0].plot(p, color=color)]
        return [t.plot(p.with_name(f"{p.stem}_{i}{p.suffix}"), color=color) for i, t in enumerate(self)]


# -- computation ---------------------------------------------------------------------------------
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


def _row_positions(positions: Any, length: int, row: int) -> list[int]:
    if positions == "all" or positions is None:
        return list(range(length))
    if positions == "last":
        return [length - 1]
    if isinstance(positions, str):
        raise InputError(f"positions must be 'all', 'last', an int or a list of ints, got {positions!r}.")
    items = [positions] if isinstance(positions, int) else list(positions)
    if not items:
        raise InputError("positions is empty.")
    out = []
    for p in items:
        if not isinstance(p, int) or isinstance(p, bool):
            raise InputError(f"positions entries must be ints, got {p!r}.")
        if not -length <= p < length:
            raise InputError(f"Position {p} is outside prompt {row}, which has {length} tokens.")
        out.append(p % length)
    return out


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


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum over the vocabulary of ``a * b`` (same shapes) as a batched matmul: no [.., V] temporary."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1))[..., 0, 0]


@torch.no_grad()
def decode_trajectories(lens: Lens, prompts: Any, top_k: int = 5, targets: Any = None, positions: Any = "all",
                        layers: Any = None) -> Trajectory | TrajectoryBatch:
    """Implementation of :meth:`Lens.decode` (see there)."""
    from lmscope.interventions import Cache

    model = lens.model
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= model.d_vocab:
        raise InputError(f"top_k must be an int in 1..{model.d_vocab}, got {top_k!r}.")
    if isinstance(prompts, str) and not prompts:
        raise InputError("The prompt is empty; give at least one token of text.")
    single = _is_single(prompts)
    idx = lens.select_readings(layers)
    target_ids = _target_ids(lens, targets)
    batch = model.tokenize(prompts)
    lengths = batch.lengths.tolist()
    width = batch.input_ids.shape[1]
    rows = [_row_positions(positions, n, b) for b, n in enumerate(lengths)]

    sites = [lens.readings[i] for i in idx]
    last_only = positions == "last"
    cache = Cache(sites, positions=-1 if last_only else None)
    result = model.run(batch, [cache])
    # flat list of (row, column) cells to decode; left padding puts token t of row b at column width - len + t
    b_idx = torch.tensor([b for b, ps in enumerate(rows) for _ in ps], dtype=torch.long)
    if last_only:
        c_idx = torch.zeros(len(b_idx), dtype=torch.long)  # the cache kept one column
    else:
        c_idx = torch.tensor([width - lengths[b] + p for b, ps in enumerate(rows) for p in ps], dtype=torch.long)
    col_out = torch.tensor([width - lengths[b] + p for b, ps in enumerate(rows) for p in ps], dtype=torch.long)
    dev = model.device
    acts = cache.cache
    if len(rows) == 1 and (positions == "all" or positions is None):  # every column of one row: views, no copies
        final_logits = result.logits[0]
        hidden = {name: acts[name][0] for name in sites}
    else:
        final_logits = result.logits[b_idx.to(dev), col_out.to(dev)]  # [N, V]
        hidden = {name: acts[name][b_idx.to(dev), c_idx.to(dev)] for name in sites}  # each [N, d]
    del result, acts  # drop references to the full [B, T, V] logits / unselected cells

    n_cells, n_r, n_t, vocab = len(b_idx), len(idx), len(target_ids), model.d_vocab
    top_ids = torch.zeros(n_r, n_cells, top_k, dtype=torch.long)
    top_probs = torch.zeros(n_r, n_cells, top_k)
    entropy, kl = torch.zeros(n_r, n_cells), torch.zeros(n_r, n_cells)
    t_rank = torch.zeros(n_r, n_cells, n_t, dtype=torch.long)
    t_prob = torch.zeros(n_r, n_cells, n_t)
    final_ids = torch.zeros(n_cells, top_k, dtype=torch.long)
    final_probs = torch.zeros(n_cells, top_k)
    tgt = torch.tensor(target_ids, dtype=torch.long, device=dev)
    # Rows of one vocabulary projection: short prompts decode several readings in one pass over the
    # unembedding (a pass is memory-bound); long prompts take small cell chunks of one reading at a time.
    budget = max(1, CHUNK_ELEMENTS // vocab)
    if n_cells < MIN_ROWS:  # few cells: the blocks stay small, batch readings for speed
        budget = max(budget, MIN_ROWS)
    chunk = min(n_cells, budget)
    group = max(1, budget // chunk)
    for s in range(0, n_cells, chunk):
        sl = slice(s, min(s + chunk, n_cells))
        logp_final = torch.log_softmax(final_logits[sl].float(), dim=-1)
        v, ids = logp_final.topk(top_k, dim=-1)
        final_ids[sl], final_probs[sl] = ids.cpu(), v.exp().cpu()
        p_final = logp_final.exp()
        neg_h_final = _dot(p_final, logp_final)  # [n]; KL = -H(final) - <p_final, logp_lens>
        del logp_final
        for g in range(0, n_r, group):
            rs = list(range(g, min(g + group, n_r)))
            h = torch.cat([lens.translate(hidden[lens.readings[idx[r]]][sl], idx[r]) for r in rs])
            logp = torch.log_softmax(model.decode_hidden(h.to(model.dtype)).float(), dim=-1)
            logp = logp.view(len(rs), -1, vocab)  # [G, n, V]
            v, ids = logp.topk(top_k, dim=-1)
            top_ids[g:g + len(rs), sl], top_probs[g:g + len(rs), sl] = ids.cpu(), v.exp().cpu()
            cross = torch.stack([_dot(p_final, logp[j]) for j in range(len(rs))])  # <p_final, logp_lens>
            kl[g:g + len(rs), sl] = (neg_h_final - cross).clamp_min(0).cpu()
            p = logp.exp()
            entropy[g:g + len(rs), sl] = (-_dot(p, logp)).clamp_min(0).cpu()
            if n_t:
                lt = logp[:, :, tgt]  # [G, n, T]
                t_prob[g:g + len(rs), sl] = lt.exp().cpu()
                t_rank[g:g + len(rs), sl] = ((logp[:, :, None, :] > lt[..., None]).sum(-1) + 1).cpu()
            del logp, p, h
    names = _TokenNames(model.tokenizer)
    texts = batch.texts
    out: list[Trajectory] = []
    start = 0
    for b, ps in enumerate(rows):
        sl = slice(start, start + len(ps))
        start += len(ps)
        ids_row = batch.input_ids[b, width - lengths[b]:].tolist()
        tids = top_ids[:, sl]
        traj = Trajectory(
            prompt=texts[b] if texts else None, lens=lens.describe(), readings=sites, positions=ps,
            input_ids=ids_row, input_tokens=[names(i) for i in ids_row], top_ids=tids, top_probs=top_probs[:, sl],
            top_tokens=[[[names(i) for i in cell] for cell in row] for row in tids.tolist()],
            entropy=entropy[:, sl], kl=kl[:, sl], final_top_ids=final_ids[sl], final_top_probs=final_probs[sl],
            final_tokens=[names(int(i)) for i in final_ids[sl, 0]],
            targets=target_ids, target_tokens=[names(i) for i in target_ids],
            target_rank=t_rank[:, sl] if n_t else None, target_prob=t_prob[:, sl] if n_t else None)
        out.append(traj)
    return out[0] if single else TrajectoryBatch(out)
