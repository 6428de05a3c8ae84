"""Prediction trajectories: what a lens reads at every reading x position of a prompt.

:class:`Trajectory` (one prompt) and :class:`TrajectoryBatch` hold the results and export them (JSON,
text table, heat maps); :func:`lmscope.lens.decode.decode_trajectories` computes them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from lmscope.interventions.errors import InputError


def show_token(tok: str, width: int | None = None) -> str:
    """A token as a quoted, escaped string (leading spaces stay visible), cut to ``width`` characters."""
    s = json.dumps(tok, ensure_ascii=False)
    if width is not None and len(s) > width:
        s = s[: max(1, width - 2)] + "…" + s[-1]
    return s


class _JsonExport:
    """``to_json`` for anything with a JSON-able ``to_dict``."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self, path: str | os.PathLike[str] | None = None, indent: int | None = None) -> str:
        """The object as JSON text; also written (atomically) to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)
        if path is not None:
            from lmscope.interventions.artifacts import atomic_write_text

            atomic_write_text(path, text)
        return text


@dataclass
class Trajectory(_JsonExport):
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

    # -- queries ---------------------------------------------------------------------------------
    def first_top1(self, target: str | int) -> list[str | None]:
        """Per decoded position, the first reading (site name, shallowest first) at which ``target`` is the
        lens's top-1 token; None where it never is.

        ``target`` is a token string or id. A tracked target (``decode(..., targets=...)``) is judged by its
        rank (rank 1); any other target by the top-1 token of each cell (``top_ids``/``top_tokens``).
        """
        top1 = self._top1_mask(target)  # [reading, position] bool
        return [next((self.readings[r] for r in range(len(self.readings)) if top1[r, c]), None)
                for c in range(len(self.positions))]

    def _top1_mask(self, target: str | int) -> torch.Tensor:
        if isinstance(target, bool) or not isinstance(target, (str, int)):
            raise InputError(f"target must be a token string or id, got {target!r}.")
        key = self.target_tokens if isinstance(target, str) else self.targets
        if target in key and self.target_rank is not None:
            return self.target_rank[:, :, key.index(target)] == 1  # type: ignore[arg-type]
        if isinstance(target, int):
            return self.top_ids[:, :, 0] == target
        return torch.tensor([[cell[0] == target for cell in row] for row in self.top_tokens], dtype=torch.bool)

    def table(self, width: int = 14, show: str = "prob") -> str:
        """Readable text table: readings down, positions across, each cell the top token and its probability.

        ``show="kl"`` prints KL (nats) instead of the probability. Tokens are JSON-quoted (spaces visible).
        With tracked targets each cell ends in ``#rank`` of every target (``#1`` = top token; several targets
        are joined by ``/``), and the title names them.
        """
        if show not in ("prob", "kl"):
            raise InputError(f"show must be 'prob' or 'kl', got {show!r}.")
        head = ["reading"] + [f"{p}:{show_token(t, width - 4)}" for p, t in zip(self.positions, self.tokens)]
        rows = [head]
        for r, name in enumerate(self.readings):
            cells = [name]
            for c in range(len(self.positions)):
                val = float(self.top_probs[r, c, 0]) if show == "prob" else float(self.kl[r, c])
                cells.append(f"{show_token(self.top_tokens[r][c][0], width - 5)} {val:.2f}{self._ranks(r, c)}")
            rows.append(cells)
        rows.append(["(output)"] + [f"{show_token(self._final_token(c), width - 5)} "
                                    f"{float(self.final_top_probs[c, 0]):.2f}" for c in range(len(self.positions))])
        widths = [max(len(row[j]) for row in rows) for j in range(len(head))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        title = f"{self.lens} lens" + (f": {show_token(self.prompt, 60)}" if self.prompt else "")
        if self.target_rank is not None and self.targets:
            names = ", ".join(show_token(t) for t in self.target_tokens) or ", ".join(map(str, self.targets))
            title += f"  (#n: rank of target{'s' if len(self.targets) > 1 else ''} {names})"
        return title + "\n" + "\n".join(lines)

    def _ranks(self, r: int, c: int) -> str:
        """`` #3`` (or `` #3/#120`` for two targets) for cell (r, c); empty without tracked targets."""
        if self.target_rank is None or not self.targets:
            return ""
        return " " + "/".join(f"#{int(k)}" for k in self.target_rank[r, c].tolist())

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


class TrajectoryBatch(_JsonExport, Sequence[Trajectory]):
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

    def table(self, **kw: Any) -> str:
        return "\n\n".join(t.table(**kw) for t in self.trajectories)

    def first_top1(self, target: str | int) -> list[list[str | None]]:
        """:meth:`Trajectory.first_top1` of every prompt."""
        return [t.first_top1(target) for t in self.trajectories]

    def plot(self, path: str | os.PathLike[str], color: str = "prob") -> list[Path]:
        """One file per prompt: ``path`` itself for one prompt, else ``stem_<i>.suffix``."""
        p = Path(path)
        if len(self) == 1:
            return [self[0].plot(p, color=color)]
        return [t.plot(p.with_name(f"{p.stem}_{i}{p.suffix}"), color=color) for i, t in enumerate(self)]
