"""``PatchingResult``: a [rows x columns] map of patched metrics, with labels, baselines and export.

Rows are patch sites (``resid_pre.3``) or heads (``head_z.3:h2``), columns token positions
(``"4: Paris"``) or ``"all"``. ``values`` holds the metric of each patched run; ``normalized()``
rescales it TransformerLens-style to 0 = unpatched run, 1 = source run. Saved as a folder:
``patching.json`` (everything, values included as lists), ``tensors.safetensors`` and ``heatmap.png``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from lmscope.interventions.artifacts import atomic_dir, load_artifact, save_tensors
from lmscope.interventions.errors import InputError, SiteError
from lmscope.interventions.sites import Site, parse_cell_label, parse_head_label

FORMAT = "lmscope.patching/1"


class TopCell(NamedTuple):
    """One cell of a map: its site, head (None for a whole site), token position (None = every token),
    ``effect`` (patched - base metric, the mean over pairs for a dataset) and the patched metric ``value``.
    A neuron row's ``site`` is its label (``mlp_post.3:n1042``); :attr:`neuron` reads the neuron from it."""

    site: str
    head: int | None
    position: int | None
    effect: float
    value: float

    @property
    def neuron(self) -> int | None:
        """The neuron of a neuron sweep's row (``mlp_post.3:n1042`` -> 1042), else None."""
        try:
            return parse_cell_label(self.site)[2]
        except SiteError:
            return None




def _row(label: str) -> tuple[Site | None, int | None]:
    """A row label as (site, head); a neuron's or a free-form label of a hand-made map is (None, None)."""
    try:
        return parse_head_label(label)
    except SiteError:
        return None, None


def _col_position(label: str) -> int | None:
    """``"4: Paris"`` / ``"4"`` / ``"-1"`` -> the token index; ``"all"`` (or a free-form label) -> None."""
    head = label.split(":", 1)[0]
    return int(head) if head.lstrip("-").isdigit() else None


@dataclass
class PatchingResult:
    """A patching map. ``base_metric``: the run being patched, unpatched; ``source_metric``: the source run.

    ``direction`` is ``"denoise"`` (clean activations written into the corrupt run, the default) or
    ``"noise"`` (corrupt into clean). ``extras`` holds further maps of the same shape (e.g. attribution
    patching's ``relative_delta``); ``notes`` human-readable caveats.

    A sweep over a dataset of pairs fills ``values`` with the mean over pairs, ``per_pair`` with every pair's map
    ``[pairs, rows, cols]`` and ``pair_base_metrics`` / ``pair_source_metrics`` with each pair's unpatched metrics
    (``base_metric``/``source_metric`` are their means). A single pair leaves these None. Standard errors are
    derived from them: :attr:`stderr` (of the effect, paired: over each pair's own patched - base),
    :attr:`stderr_normalized` (of the normalised effect, paired) and :attr:`stderr_raw` (of the raw patched metric,
    which also carries the spread of the pairs' own baselines).
    """

    values: torch.Tensor  # [rows, cols]
    row_labels: list[str]
    col_labels: list[str]
    base_metric: float
    source_metric: float
    method: str
    direction: str = "denoise"
    metric_name: str = "metric"
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    per_pair: torch.Tensor | None = None  # [pairs, rows, cols]
    pair_base_metrics: list[float] | None = None
    pair_source_metrics: list[float] | None = None

    def __post_init__(self) -> None:
        shape = (len(self.row_labels), len(self.col_labels))
        if tuple(self.values.shape) != shape:
            raise InputError(f"values have shape {tuple(self.values.shape)}; labels give {shape}.")
        if self.per_pair is not None and tuple(self.per_pair.shape[1:]) != shape:
            raise InputError(f"per_pair has shape {tuple(self.per_pair.shape)}; the map is {shape}.")
        for name in ("pair_base_metrics", "pair_source_metrics"):
            pairs = getattr(self, name)
            if pairs is not None and self.per_pair is not None and len(pairs) != self.per_pair.shape[0]:
                raise InputError(f"{name} has {len(pairs)} entries; per_pair has {self.per_pair.shape[0]} pairs.")
        for k, v in self.extras.items():
            if tuple(v.shape) != shape:
                raise InputError(f"extra map {k!r} has shape {tuple(v.shape)}; the map is {shape}.")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)  # type: ignore[return-value]

    def normalized(self) -> torch.Tensor:
        """``(patched - base) / (source - base)``: 0 = no effect, 1 = the patch restores the source metric."""
        gap = self.source_metric - self.base_metric
        if gap == 0:
            raise InputError("The source and base runs give the same metric; there is nothing to normalise by.")
        return (self.values - self.base_metric) / gap

    def effect(self) -> torch.Tensor:
        """``patched - base``: the change each patch causes."""
        return self.values - self.base_metric

    # -- spread over a dataset's pairs ------------------------------------------------------------------
    def pair_effects(self) -> torch.Tensor | None:
        """``[pairs, rows, cols]``: each pair's patched metric minus that pair's own base metric (None without
        ``per_pair`` and ``pair_base_metrics``). Their mean is :meth:`effect`."""
        if self.per_pair is None or self.pair_base_metrics is None:
            return None
        return self.per_pair - torch.tensor(self.pair_base_metrics, dtype=self.per_pair.dtype)[:, None, None]

    @property
    def stderr(self) -> torch.Tensor | None:
        """``[rows, cols]``: the paired standard error of :meth:`effect` -- the spread of each pair's own effect
        (:meth:`pair_effects`), so a cell that moves every pair's metric by the same amount has 0 however much the
        pairs' baselines differ. None for a single pair. The raw metric's is :attr:`stderr_raw`."""
        effects = self.pair_effects()
        return None if effects is None else _sem(effects)

    @property
    def stderr_raw(self) -> torch.Tensor | None:
        """``[rows, cols]``: the standard error of the raw patched metric ``values`` over pairs (not paired: it
        includes the spread of the pairs' own base metrics, so it is the same size for a null cell as for a strong
        one). None for a single pair."""
        return None if self.per_pair is None else _sem(self.per_pair)

    @property
    def stderr_normalized(self) -> torch.Tensor | None:
        """``[rows, cols]``: the paired standard error of :meth:`normalized`, a ratio of means ``F = mean(a) /
        mean(b)`` with ``a`` each pair's effect and ``b`` its gap (source - base): the delta method's
        ``std(a - F b) / (sqrt(n) |mean(b)|)``. When every pair has the same gap it is the standard error of the
        per-pair normalised effects ``a / b``; unlike theirs it stays finite when one pair's gap is near 0. None for
        a single pair."""
        effects = self.pair_effects()
        if effects is None or self.pair_source_metrics is None:
            return None
        gaps = torch.tensor(self.pair_source_metrics, dtype=effects.dtype) - \
            torch.tensor(self.pair_base_metrics or [], dtype=effects.dtype)
        ratio = self.normalized()  # refuses a zero mean gap
        residual = effects - ratio[None] * gaps[:, None, None]
        return _sem(residual) / abs(float(gaps.mean()))

    def top(self, k: int = 5) -> list[TopCell]:
        """The ``k`` cells with the largest |effect| (patched - base), largest first, as :class:`TopCell` records."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive int, got {k!r}.")
        effect = self.effect().flatten()
        idx = effect.abs().argsort(descending=True, stable=True)[:k].tolist()
        n = self.values.shape[1]
        out = []
        for i in idx:
            label = self.row_labels[i // n]
            site, head = _row(label)
            out.append(TopCell(label if site is None else site.name, head, _col_position(self.col_labels[i % n]),
                               float(effect[i]), float(self.values.flatten()[i])))
        return out

    def head_layers(self) -> list[int]:
        """The layers of a head sweep's rows (``head_z.L:hH``, or heads of another per-head kind), in the order
        :meth:`by_head` stacks them."""
        return sorted({site.layer for site, head in map(_row, self.row_labels)
                       if head is not None and site is not None and site.layer is not None})

    def by_head(self, what: str = "values", positions: bool = False) -> torch.Tensor:
        """A head sweep's map as ``[layers, heads]``, or ``[layers, heads, positions]`` with ``positions=True``.

        ``[layers, heads]`` needs a map of one column (``positions="all"``, the default of ``head_sweep``, or one
        position such as ``[-1]``); a map of several positions is an InputError unless ``positions=True``, so the
        shape never depends on the sweep. Layers are :meth:`head_layers` in order; ``what`` is ``"values"``
        (patched metric), ``"effect"`` (patched - base), ``"normalized"``, or for dataset sweeps ``"stderr"``
        (paired, of the effect), ``"stderr_normalized"`` (paired, of the normalised effect) or ``"stderr_raw"``
        (of the raw patched metric). Every row must be a head.
        """
        data = self._map(what)
        if not positions and len(self.col_labels) != 1:
            shown = ", ".join(repr(c) for c in self.col_labels[:3]) + (", ..." if len(self.col_labels) > 3 else "")
            raise InputError(f"by_head() is [layers, heads], but this map has {len(self.col_labels)} position columns "
                             f"({shown}); pass positions=True for [layers, heads, positions], or sweep with "
                             "positions='all' or one position such as [-1].")
        keys = [_row(r) for r in self.row_labels]
        if any(h is None or s is None for s, h in keys) or len({s.kind for s, _ in keys if s is not None}) != 1:
            raise InputError("by_head needs a head sweep of one site kind (rows 'head_z.L:hH', e.g. from head_sweep "
                             "or patching_sweep(..., heads=True)); this result has rows like "
                             f"{self.row_labels[0]!r}.")
        layers = self.head_layers()
        n_heads = max(h for _, h in keys if h is not None) + 1
        row_of = {(s.layer, h): i for i, (s, h) in enumerate(keys) if s is not None}
        missing = [(layer, h) for layer in layers for h in range(n_heads) if (layer, h) not in row_of]
        if missing:
            raise InputError(f"by_head needs every head of each layer; missing (layer, head) {missing[:3]}.")
        out = torch.stack([torch.stack([data[row_of[(layer, h)]] for h in range(n_heads)]) for layer in layers])
        return out if positions else out[..., 0]

    def _map(self, what: str) -> torch.Tensor:
        """The ``[rows, cols]`` map named ``what`` (see :meth:`by_head`)."""
        maps = {"values": lambda: self.values, "effect": self.effect, "normalized": self.normalized,
                "stderr": lambda: self.stderr, "stderr_normalized": lambda: self.stderr_normalized,
                "stderr_raw": lambda: self.stderr_raw}
        if what not in maps:
            raise InputError(f"what must be one of {', '.join(maps)}, got {what!r}.")
        data = maps[what]()
        if data is None:
            raise InputError(f"This result has no {what} (it is a single-pair sweep: standard errors need a dataset "
                             "of pairs with their base and source metrics).")
        return data

    # -- export --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with every field (tensors as nested lists)."""
        return {"format": FORMAT, "method": self.method, "direction": self.direction,
                "metric": self.metric_name, "base_metric": self.base_metric, "source_metric": self.source_metric,
                "rows": self.row_labels, "cols": self.col_labels, "values": self.values.tolist(),
                "extras": {k: v.tolist() for k, v in self.extras.items()}, "notes": self.notes,
                "per_pair": None if self.per_pair is None else self.per_pair.tolist(),
                **{k: None if v is None else v.tolist() for k, v in self._errors().items()},
                "pair_base_metrics": self.pair_base_metrics, "pair_source_metrics": self.pair_source_metrics}

    def save(self, path: str | os.PathLike[str], png: bool = True) -> Path:
        """Write the folder ``path`` atomically: ``patching.json``, ``tensors.safetensors``, ``heatmap.png``."""
        with atomic_dir(path) as tmp:
            (tmp / "patching.json").write_text(json.dumps(self.to_dict(), indent=1))
            tensors = {"values": self.values, **{f"extras.{k}": v for k, v in self.extras.items()}}
            if self.per_pair is not None:
                tensors["per_pair"] = self.per_pair
            save_tensors({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()},
                         tmp / "tensors.safetensors", shown=Path(path) / "tensors.safetensors")
            if png:
                self.plot().savefig(tmp / "heatmap.png", dpi=110, bbox_inches="tight")
        return Path(path)

    def _errors(self) -> dict[str, torch.Tensor | None]:
        """The three standard errors by name (None for a single pair; the normalised one also without a gap)."""
        gap = self.source_metric != self.base_metric
        return {"stderr": self.stderr, "stderr_normalized": self.stderr_normalized if gap else None,
                "stderr_raw": self.stderr_raw}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PatchingResult:
        """Read a folder written by :meth:`save` (tensors from safetensors, never pickle). Standard errors are
        derived from ``per_pair`` and the pairs' metrics, so a folder saved before they were paired loads with the
        paired ones too (its stored raw ``stderr`` tensor is not read)."""
        config, tensors = load_artifact(path, config_name="patching.json")
        if config.get("format") != FORMAT:
            raise InputError(f"{path} is not a patching result (format {config.get('format')!r}).")
        extras = {k.removeprefix("extras."): v for k, v in tensors.items() if k.startswith("extras.")}
        return cls(tensors["values"], config["rows"], config["cols"], config["base_metric"],
                   config["source_metric"], config["method"], config["direction"], config["metric"], extras,
                   config["notes"], per_pair=tensors.get("per_pair"),
                   pair_base_metrics=config.get("pair_base_metrics"),
                   pair_source_metrics=config.get("pair_source_metrics"))

    def plot(self, normalized: bool = False, title: str | None = None) -> Any:
        """A matplotlib ``Figure`` heat map (rows x positions), centred at no effect; no pyplot state."""
        from matplotlib.figure import Figure

        data = (self.normalized() if normalized else self.effect()).float().numpy()
        n_r, n_c = data.shape
        fig = Figure(figsize=(min(30.0, 2.5 + 0.55 * n_c), min(40.0, 1.5 + 0.22 * n_r)))
        ax = fig.add_subplot()
        lim = float(abs(data).max()) or 1.0
        im = ax.imshow(data, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(n_c), [_short(c) for c in self.col_labels], rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(n_r), self.row_labels, fontsize=6 if n_r > 40 else 7)
        what = "normalised (0 = base, 1 = source)" if normalized else f"Δ {self.metric_name} (patched - base)"
        fig.colorbar(im, ax=ax, label=what)
        ax.set_title(title or f"{self.method} patching ({self.direction})", fontsize=9)
        return fig


def _sem(stacked: torch.Tensor) -> torch.Tensor:
    """Standard error of the mean over the first axis (sample standard deviation / sqrt(n))."""
    return stacked.std(0, unbiased=True) / stacked.shape[0] ** 0.5


def _short(label: str, width: int = 12) -> str:
    s = label.replace("\n", "\\n")
    return s if len(s) <= width else s[: width - 1] + "…"
