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
from typing import Any

import torch

from lmscope.interventions.artifacts import atomic_dir, load_artifact, save_tensors
from lmscope.interventions.errors import InputError

FORMAT = "lmscope.patching/1"


@dataclass
class PatchingResult:
    """A patching map. ``base_metric``: the run being patched, unpatched; ``source_metric``: the source run.

    ``direction`` is ``"denoise"`` (clean activations written into the corrupt run, the default) or
    ``"noise"`` (corrupt into clean). ``extras`` holds further maps of the same shape (e.g. attribution
    patching's ``relative_delta``); ``notes`` human-readable caveats.
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

    def __post_init__(self) -> None:
        shape = (len(self.row_labels), len(self.col_labels))
        if tuple(self.values.shape) != shape:
            raise InputError(f"values have shape {tuple(self.values.shape)}; labels give {shape}.")
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

    def top(self, k: int = 5) -> list[tuple[str, str, float]]:
        """The ``k`` cells with the largest |effect| as (row, column, patched metric)."""
        flat = self.effect().abs().flatten()
        idx = flat.argsort(descending=True)[:k].tolist()
        n = self.values.shape[1]
        return [(self.row_labels[i // n], self.col_labels[i % n], float(self.values.flatten()[i])) for i in idx]

    # -- export --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with every field (tensors as nested lists)."""
        return {"format": FORMAT, "method": self.method, "direction": self.direction,
                "metric": self.metric_name, "base_metric": self.base_metric, "source_metric": self.source_metric,
                "rows": self.row_labels, "cols": self.col_labels, "values": self.values.tolist(),
                "extras": {k: v.tolist() for k, v in self.extras.items()}, "notes": self.notes}

    def save(self, path: str | os.PathLike[str], png: bool = True) -> Path:
        """Write the folder ``path`` atomically: ``patching.json``, ``tensors.safetensors``, ``heatmap.png``."""
        with atomic_dir(path) as tmp:
            (tmp / "patching.json").write_text(json.dumps(self.to_dict(), indent=1))
            tensors = {"values": self.values, **{f"extras.{k}": v for k, v in self.extras.items()}}
            save_tensors({k: v.float() for k, v in tensors.items()}, tmp / "tensors.safetensors",
                         shown=Path(path) / "tensors.safetensors")
            if png:
                self.plot().savefig(tmp / "heatmap.png", dpi=110, bbox_inches="tight")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PatchingResult:
        """Read a folder written by :meth:`save` (tensors from safetensors, never pickle)."""
        config, tensors = load_artifact(path, config_name="patching.json")
        if config.get("format") != FORMAT:
            raise InputError(f"{path} is not a patching result (format {config.get('format')!r}).")
        extras = {k.removeprefix("extras."): v for k, v in tensors.items() if k.startswith("extras.")}
        return cls(tensors["values"], config["rows"], config["cols"], config["base_metric"],
                   config["source_metric"], config["method"], config["direction"], config["metric"], extras,
                   config["notes"])

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


def _short(label: str, width: int = 12) -> str:
    s = label.replace("\n", "\\n")
    return s if len(s) <= width else s[: width - 1] + "…"
