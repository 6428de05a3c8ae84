"""The one plotting helper every method figure goes through (steering, binding, overthinking, probes).

Three figure kinds cover the methods' plots; each returns the matplotlib ``Figure`` (so a notebook cell
that ends with the call displays it) and, given ``path``, also writes it atomically (``.png``, ``.pdf``,
``.svg``) through :func:`lmscope.interventions.artifacts.atomic_save_figure`::

    from lmscope.probes.plotting import Series, heatmap, line_plot, panels, save_figure

    # layer x head scores, labelled axes and a colour bar (center=0: diverging map symmetric around 0)
    fig = heatmap(scores, row_labels=[f"L{i}" for i in range(n_layers)], xlabel="head", ylabel="layer",
                  cbar_label="logit difference", center=0.0, title="Patching", path="out/heads.png")

    # one curve per lens/condition over layers; a Series adds a band (e.g. a 95% interval), its own x or style
    fig = line_plot(range(n_layers), {"tuned": kl_tuned, "logit": Series(kl_logit, band=(lo, hi))},
                    xlabel="layer", ylabel="KL (nats)", reference={"chance": 0.25}, path="out/kl.png")

    # several panels in one figure: draw into the axes, then save once
    fig, axes = panels(2)
    line_plot(x, {"accuracy": acc}, ax=axes[0])
    heatmap(matrix, ax=axes[1])
    save_figure(fig, "out/both.png")

Figures are made through pyplot and closed at once (``plt.close``): nothing accumulates in pyplot's
registry across a long sweep, a notebook shows the returned figure exactly once, and no backend is forced
(headless runs fall back to Agg by themselves). Bad input (wrong shapes, label counts) raises
:class:`~lmscope.interventions.errors.InputError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union, cast

import numpy as np

from lmscope.interventions.artifacts import atomic_save_figure
from lmscope.interventions.errors import InputError
from lmscope.lens.plot import set_wrapped_title

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ArrayLike = Any  # a sequence of numbers, a numpy array or a (CPU) torch tensor


@dataclass
class Series:
    """One curve of :func:`line_plot` when plain ``y`` values are not enough.

    ``x`` overrides the plot's shared x (e.g. a fitted curve on a finer grid); ``band = (lo, hi)`` shades
    an interval around the curve; ``style`` is a matplotlib format string (``"o-"`` points joined by a
    line, ``"o"`` points only, ``"--"`` dashed line).
    """

    y: ArrayLike
    x: ArrayLike | None = None
    band: tuple[ArrayLike, ArrayLike] | None = None
    style: str = "o-"


def _array(values: ArrayLike, what: str, ndim: int) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    arr = np.asarray(values, dtype=float)
    if arr.ndim != ndim:
        raise InputError(f"{what} must be {ndim}-D, got shape {arr.shape}.")
    return arr


def _labels(labels: Sequence[Any] | None, n: int, what: str, noun: str) -> list[str] | None:
    if labels is None:
        return None
    out = [str(x) for x in labels]
    if len(out) != n:
        raise InputError(f"{what} has {len(out)} labels for {n} {noun}.")
    return out


def panels(n: int = 1, ncols: int | None = None, size: tuple[float, float] = (5.0, 4.0)) -> tuple[Figure, list[Axes]]:
    """A new figure of ``n`` panels (``ncols`` per row, default all in one row), each ``size`` inches."""
    import matplotlib.pyplot as plt

    if n < 1:
        raise InputError(f"panels needs n >= 1, got {n}.")
    ncols = min(n, ncols or n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    plt.close(fig)  # detach from pyplot: the caller owns it (see the module docstring)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Lay out ``fig`` and write it atomically (the suffix picks the format); returns the path."""
    fig.tight_layout()
    return atomic_save_figure(fig, path, dpi=dpi)


def _finish(fig: Figure, ax: Axes, title: str | None, xlabel: str | None, ylabel: str | None,
            path: str | os.PathLike[str] | None) -> Figure:
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        set_wrapped_title(fig, ax, title)  # long titles wrap to the panel instead of running off the figure
    if path is not None:
        save_figure(fig, path)
    return fig


def heatmap(values: ArrayLike, *, row_labels: Sequence[Any] | None = None, col_labels: Sequence[Any] | None = None,
            xlabel: str | None = None, ylabel: str | None = None, title: str | None = None,
            cbar_label: str | None = None, cmap: str | None = None, vmin: float | None = None,
            vmax: float | None = None, center: float | None = None, annotate: str | None = None,
            origin: str = "upper", ax: Axes | None = None, path: str | os.PathLike[str] | None = None) -> Figure:
    """Heat map of a 2-D array ``[rows, cols]`` with labelled axes and a colour bar.

    ``center`` makes a diverging map (``RdBu_r``) symmetric around that value; otherwise ``cmap``
    (default ``viridis``) spans ``vmin..vmax`` (default: the data range). ``annotate`` is a format
    string (e.g. ``"{:.2f}"``) printed in every cell; ``origin="lower"`` puts row 0 at the bottom
    (depth growing upwards). Draws into ``ax`` when given, else a new one-panel figure.
    """
    arr = _array(values, "heatmap values", 2)
    rows = _labels(row_labels, arr.shape[0], "row_labels", "rows")
    cols = _labels(col_labels, arr.shape[1], "col_labels", "columns")
    if origin not in ("upper", "lower"):
        raise InputError(f"origin must be 'upper' or 'lower', got {origin!r}.")
    if ax is None:
        fig, (ax,) = panels(1, size=(min(40.0, 2.5 + 0.5 * arr.shape[1]), min(40.0, 1.5 + 0.3 * arr.shape[0])))
    fig = cast(Any, ax.figure)
    if center is not None:
        finite = np.abs(arr[np.isfinite(arr)] - center)
        half = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        vmin, vmax, cmap = center - half, center + half, cmap or "RdBu_r"
    im = ax.imshow(arr, aspect="auto", origin=cast(Any, origin), cmap=cmap or "viridis", vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    if cols is not None:
        ax.set_xticks(range(len(cols)), cols, rotation=45 if max(map(len, cols), default=0) > 3 else 0,
                      ha="right" if max(map(len, cols), default=0) > 3 else "center", fontsize=8)
    if rows is not None:
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
    if annotate:
        lo, hi = im.get_clim()
        for (r, c), v in np.ndenumerate(arr):
            dark = hi > lo and abs(v - (lo + hi) / 2) > 0.3 * (hi - lo)
            ax.text(c, r, annotate.format(v), ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    fig.colorbar(im, ax=ax, label=cbar_label or "")
    return _finish(fig, ax, title, xlabel, ylabel, path)


def line_plot(x: ArrayLike, series: Mapping[str, Union[ArrayLike, Series]], *, xlabel: str | None = None,
              ylabel: str | None = None, title: str | None = None, xticklabels: Sequence[Any] | None = None,
              reference: Mapping[str, float] | None = None, legend: bool = True, ax: Axes | None = None,
              path: str | os.PathLike[str] | None = None) -> Figure:
    """Curves over a shared ``x`` (typically layers), one per ``series`` entry (label -> y or :class:`Series`).

    ``reference`` draws labelled horizontal lines (e.g. ``{"chance": 0.25}``); ``xticklabels`` names the
    x positions (e.g. reading names; thinned to about 12 labels). Draws into ``ax`` when given.
    """
    xs = _array(x, "x", 1)
    if not series:
        raise InputError("line_plot needs at least one series.")
    if ax is None:
        fig, (ax,) = panels(1, size=(6.0, 4.0))
    fig = cast(Any, ax.figure)
    for label, s in series.items():
        spec = s if isinstance(s, Series) else Series(s)
        sx = xs if spec.x is None else _array(spec.x, f"x of series {label!r}", 1)
        sy = _array(spec.y, f"series {label!r}", 1)
        if sy.shape != sx.shape:
            raise InputError(f"Series {label!r} has {sy.size} values for {sx.size} x positions.")
        (line,) = ax.plot(sx, sy, spec.style, ms=3, label=label)
        if spec.band is not None:
            lo, hi = (_array(b, f"band of series {label!r}", 1) for b in spec.band)
            if lo.shape != sx.shape or hi.shape != sx.shape:
                raise InputError(f"The band of series {label!r} must have {sx.size} values on each side.")
            ax.fill_between(sx, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    for label, yv in (reference or {}).items():
        ax.axhline(float(yv), color="gray", ls="--", lw=1, label=label)
    if xticklabels is not None:
        names = _labels(xticklabels, xs.size, "xticklabels", "x positions")
        assert names is not None
        step = max(1, len(names) // 12)
        ax.set_xticks(xs[::step], names[::step], rotation=45, ha="right", fontsize=7)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8)
    return _finish(fig, ax, title, xlabel, ylabel, path)
