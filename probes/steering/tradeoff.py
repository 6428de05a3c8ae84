"""The alignment/helpfulness trade-off of steering (Wolf et al., arXiv 2401.16332).

Steer with a (by default unit) vector times ``r`` for each scale ``r``, score an
alignment eval and a helpfulness eval at each scale, and fit the paper's shapes:

- alignment ``y = A tanh(a r + b)`` (``A = 1`` in the paper; fitted here because
  small models rarely saturate at ±1) and a straight line near ``r = 0``;
- helpfulness ``y = 1 / (1 + a + a (b^2/2) r^2)`` (the paper's form: falls
  quadratically in the norm) and a plain quadratic ``c0 + c1 r + c2 r^2``.

Every fit reports its coefficients and R².
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

import numpy as np

from lmscope.interventions.errors import InputError
from lmscope.interventions.progress import bar_disable
from lmscope.interventions.specs import LayerSpec

from .evals import as_eval, run_eval
from .vectors import SteeringVector

#: A series of numbers: a list or a 1-D array.
Floats = Union[Sequence[float], np.ndarray]

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel
    from lmscope.interventions.positions import PositionSpec


@dataclass
class Fit:
    """One fitted curve: its name, coefficients, R² and the function itself."""

    name: str
    params: dict[str, float]
    r2: float
    fn: Callable[[np.ndarray], np.ndarray] = field(repr=False)

    def __call__(self, r: Any) -> np.ndarray:
        return self.fn(np.asarray(r, dtype=float))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "r2": self.r2}


def r_squared(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination (1 for a perfect fit; nan when ``y`` is constant)."""
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if ss_tot == 0.0:
        return float("nan")
    return 1.0 - float(((y - pred) ** 2).sum()) / ss_tot


def _xy(r: Floats, y: Floats, need: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, yy = np.asarray(r, float), np.asarray(y, float)
    if x.shape != yy.shape or x.ndim != 1:
        raise InputError(f"{what}: scales and scores must be 1-D and the same length, got {x.shape} and {yy.shape}.")
    ok = np.isfinite(x) & np.isfinite(yy)
    if ok.sum() < need:
        raise InputError(f"{what} needs at least {need} finite points, got {int(ok.sum())}.")
    return x[ok], yy[ok]


def fit_linear(r: Floats, y: Floats, window: float | None = None) -> Fit:
    """Least-squares line ``y = slope r + intercept`` (only points with ``|r| <= window`` when given)."""
    x, yy = _xy(r, y, 2, "fit_linear")
    if window is not None:
        keep = np.abs(x) <= window
        if keep.sum() < 2:
            raise InputError(f"fit_linear: fewer than two scales within |r| <= {window}.")
        x, yy = x[keep], yy[keep]
    slope, intercept = np.polyfit(x, yy, 1)
    fn = lambda t: slope * t + intercept
    return Fit("linear", {"slope": float(slope), "intercept": float(intercept)}, r_squared(yy, fn(x)), fn)


def fit_quadratic(r: Floats, y: Floats) -> Fit:
    """Least-squares ``y = c0 + c1 r + c2 r^2``."""
    x, yy = _xy(r, y, 3, "fit_quadratic")
    c2, c1, c0 = np.polyfit(x, yy, 2)
    fn = lambda t: c0 + c1 * t + c2 * t ** 2
    return Fit("quadratic", {"c0": float(c0), "c1": float(c1), "c2": float(c2)}, r_squared(yy, fn(x)), fn)


def fit_tanh(r: Floats, y: Floats, amplitude: bool = True) -> Fit:
    """``y = A tanh(a r + b)`` by nonlinear least squares (``A`` fixed to 1 unless ``amplitude``)."""
    from scipy.optimize import curve_fit

    x, yy = _xy(r, y, 3 if amplitude else 2, "fit_tanh")
    span = float(np.ptp(x)) or 1.0
    f: Callable[..., np.ndarray]
    guesses: list[tuple[float, ...]]
    if amplitude:
        f = lambda t, A, a, b: A * np.tanh(a * t + b)
        amp0 = float(np.max(np.abs(yy))) or 1.0
        guesses = [(amp0 * 1.05, s / span, 0.0) for s in (0.5, 2.0, 8.0, -2.0)]
    else:
        f = lambda t, a, b: np.tanh(a * t + b)
        guesses = [(s / span, 0.0) for s in (0.5, 2.0, 8.0, -2.0)]
    best: tuple[float, np.ndarray] | None = None
    for p0 in guesses:
        try:
            popt = _curve_fit(curve_fit, f, x, yy, p0)
        except (RuntimeError, ValueError):
            continue
        sse = float(((f(x, *popt) - yy) ** 2).sum())
        if best is None or sse < best[0]:
            best = (sse, popt)
    if best is None:
        raise InputError("fit_tanh did not converge on these points.")
    popt = best[1]
    if amplitude and popt[0] < 0:  # A tanh(z) = (-A) tanh(-z): report a positive amplitude
        popt = np.array([-popt[0], -popt[1], -popt[2]])
    names = ["A", "a", "b"] if amplitude else ["a", "b"]
    fn = lambda t, p=popt: f(t, *p)
    return Fit("tanh", {k: float(v) for k, v in zip(names, popt)}, r_squared(yy, fn(x)), fn)


def _curve_fit(curve_fit: Callable[..., Any], f: Callable[..., Any], x: np.ndarray, y: np.ndarray,
               p0: Sequence[float]) -> np.ndarray:
    """``scipy.optimize.curve_fit`` parameters only: the covariance (and its warning when a few points
    pin the parameters exactly) is not used here."""
    import warnings

    from scipy.optimize import OptimizeWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        popt, _ = curve_fit(f, x, y, p0=p0, maxfev=20000)
    return popt


def fit_wolf_helpfulness(r: Floats, y: Floats) -> Fit:
    """Wolf et al.'s helpfulness law ``y = 1 / (1 + a + a (b^2/2) r^2)`` (``b`` reported as ``|b|``).

    Fitted as ``1/y = (1 + a) + (a b^2 / 2) r^2``: a line in ``r^2``, then refined by
    nonlinear least squares on ``y`` itself.
    """
    from scipy.optimize import curve_fit

    x, yy = _xy(r, y, 2, "fit_wolf_helpfulness")
    if np.any(yy <= 0):
        raise InputError("fit_wolf_helpfulness needs positive helpfulness scores.")
    f = lambda t, a, b: 1.0 / (1.0 + a + a * (b ** 2 / 2.0) * t ** 2)
    k, c = np.polyfit(x ** 2, 1.0 / yy, 1)  # 1/y = c + k r^2
    a0 = max(c - 1.0, 1e-3)
    b0 = math.sqrt(max(2.0 * k / a0, 1e-6))
    try:
        popt = _curve_fit(curve_fit, f, x, yy, (a0, b0))
    except (RuntimeError, ValueError):
        popt = np.array([a0, b0])
    popt = np.array([popt[0], abs(popt[1])])
    fn = lambda t, p=popt: f(t, *p)
    return Fit("wolf", {"a": float(popt[0]), "b": float(popt[1])}, r_squared(yy, fn(x)), fn)


@dataclass
class TradeoffResult:
    """A sweep: one row per scale (``scale``, ``alignment``, ``helpfulness`` plus each eval's extra keys)."""

    rows: list[dict[str, float]]
    layers: list[int]
    normalize: bool
    fits: dict[str, Fit] = field(default_factory=dict)
    unit: str = "raw"

    @property
    def scales(self) -> np.ndarray:
        return np.array([r["scale"] for r in self.rows])

    def column(self, key: str) -> np.ndarray:
        return np.array([r.get(key, float("nan")) for r in self.rows])

    def fit(self, linear_window: float | None = None) -> dict[str, Fit]:
        """Fit alignment (tanh, linear near 0) and helpfulness (Wolf law, quadratic); stored in ``fits``.

        ``linear_window`` bounds ``|r|`` for the linear fit (default: a quarter of the largest |scale|).
        """
        r, al, he = self.scales, self.column("alignment"), self.column("helpfulness")
        window: float | None = linear_window if linear_window is not None else float(np.max(np.abs(r))) / 4
        if (np.abs(r) <= window).sum() < 2:
            window = None  # too few central scales: fit the line on everything
        fits: dict[str, Fit] = {}
        for key, fn in (("alignment_tanh", lambda: fit_tanh(r, al)),
                        ("alignment_linear", lambda: fit_linear(r, al, window)),
                        ("helpfulness_wolf", lambda: fit_wolf_helpfulness(r, he)),
                        ("helpfulness_quadratic", lambda: fit_quadratic(r, he))):
            try:
                fits[key] = fn()
            except InputError:
                continue
        self.fits = fits
        return fits

    def to_markdown(self, digits: int = 4) -> str:
        """The table and the fits as Markdown."""
        keys = ["scale", "alignment", "helpfulness"] + sorted({k for r in self.rows for k in r} -
                                                              {"scale", "alignment", "helpfulness"})
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for row in self.rows:
            lines.append("| " + " | ".join(f"{row.get(k, float('nan')):.{digits}g}" for k in keys) + " |")
        for name, f in self.fits.items():
            coeffs = ", ".join(f"{k}={v:.4g}" for k, v in f.params.items())
            lines.append(f"\n- {name}: {coeffs}; R² = {f.r2:.3f}")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str] | None = None, title: str | None = None) -> Any:
        """Both curves with their fits (a matplotlib ``Figure``); also written atomically when ``path`` is given."""
        from ..plotting import Series, line_plot, panels, save_figure

        if not self.fits:
            self.fit()
        r = self.scales
        grid = np.linspace(float(r.min()), float(r.max()), 200)
        fig, axes = panels(2)
        for ax, key, names in ((axes[0], "alignment", ("alignment_tanh", "alignment_linear")),
                               (axes[1], "helpfulness", ("helpfulness_wolf", "helpfulness_quadratic"))):
            curves: dict[str, Any] = {"measured": Series(self.column(key), style="o")}
            for name in names:
                if name in self.fits:
                    f = self.fits[name]
                    curves[f"{f.name} (R²={f.r2:.2f})"] = Series(f(grid), x=grid, style="-")
            xlabel = "steering scale r" + (" (x typical residual norm)" if self.unit == "resid" else "")
            line_plot(r, curves, xlabel=xlabel, ylabel=key, ax=ax)
        fig.suptitle(title or f"Steering trade-off (layers {self.layers})")
        if path is not None:
            save_figure(fig, path)
        return fig

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "layers": self.layers, "normalize": self.normalize, "unit": self.unit,
                "fits": {k: f.as_dict() for k, f in self.fits.items()}}


def steering_tradeoff(model: HookedModel, vector: SteeringVector, scales: Sequence[float], alignment_eval: Any,
                      helpfulness_eval: Any, layers: LayerSpec = None, normalize: bool = True,
                      positions: PositionSpec = "all", fit: bool = True, progress: bool = False,
                      unit: str = "raw") -> TradeoffResult:
    """Sweep steering scales; score alignment and helpfulness at each; fit both curves.

    ``vector`` is applied at ``layers`` (default: all its layers) with
    ``normalize=True`` making each layer's vector unit norm, so ``scale`` is the
    paper's ``r_e``; ``unit="resid"`` counts each scale in the layer's typical residual norm
    instead (as :meth:`SteeringVector.to_steer` and ``generation_sweep`` do; ``normalize`` is
    implied). The evals are callables ``(model, interventions) -> float |
    dict`` or prompt/answer lists (see :func:`lmscope.probes.steering.evals.as_eval`); each scores
    its prompts in batches, so a scale costs one run per batch per eval.
    """
    scales = [float(s) for s in scales]
    if not scales:
        raise InputError("scales is empty: give at least one steering scale.")
    vector.check(model)
    align, helpful = as_eval(alignment_eval), as_eval(helpfulness_eval)
    chosen = [vector.layers[vector.sites.index(s)] for s in vector.sites_of(layers)]
    from tqdm.auto import tqdm

    rows = []
    for s in tqdm(scales, desc="steering sweep", disable=bar_disable(progress), leave=False):
        steers = vector.to_steer(s, positions=positions, normalize=normalize, layers=chosen, unit=unit) if s else []
        a = run_eval(align, model, steers)
        h = run_eval(helpful, model, steers)
        row = {"scale": s, "alignment": a.pop("score"), "helpfulness": h.pop("score")}
        row.update({f"alignment_{k}": v for k, v in a.items()})
        row.update({f"helpfulness_{k}": v for k, v in h.items()})
        rows.append(row)
    result = TradeoffResult(rows, chosen, normalize, unit=unit)
    if fit and len(rows) >= 3:
        result.fit()
    return result
