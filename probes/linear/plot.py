"""Per-layer plot of a probe sweep: accuracy with its spread, the control task, selectivity and baselines."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .sweep import SweepResult


def _x(sites: list[str]) -> tuple[list[float], list[str]]:
    """Layer numbers when every site is ``kind.L`` of one kind, else the site order."""
    m = [re.fullmatch(r"([a-z_][a-z0-9_]*)\.(\d+)", s) for s in sites]
    if all(m) and len({x.group(1) for x in m if x}) == 1:
        return [float(x.group(2)) for x in m if x], sites
    return [float(i) for i in range(len(sites))], sites


def plot_sweep(result: SweepResult, path: str | os.PathLike[str] | None = None, title: str | None = None) -> Any:
    """Draw (and save to ``path`` when given) accuracy ± std per layer with every control; returns the figure."""
    import matplotlib

    if path is not None and matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = [r["site"] for r in result.rows]
    x, labels = _x(sites)
    fig, ax = plt.subplots(figsize=(8, 4))
    acc, std = np.array(result.column("acc")), np.array(result.column("acc_std"))
    ax.plot(x, acc, "o-", label="probe accuracy", color="C0")
    ax.fill_between(x, acc - std, acc + std, color="C0", alpha=0.2)
    if "control_acc" in result.rows[0]:
        ax.plot(x, result.column("control_acc"), "s--", label="control task (H&L 2019)", color="C3")
        ax.plot(x, result.column("selectivity"), "^-", label="selectivity", color="C2")
    for key in [k for k in result.rows[0] if k.endswith("_acc") and k != "control_acc"]:
        ys = np.array(result.column(key))
        ok = ~np.isnan(ys)
        ax.plot(np.array(x)[ok], ys[ok], "d:", label=key.removesuffix("_acc").replace("_", " ") + " model")
    ax.axhline(result.rows[0]["majority"], color="grey", ls=":", label="majority class")
    if not all(re.fullmatch(r"[a-z_][a-z0-9_]*\.\d+", s) for s in sites) or len({s.split(".")[0] for s in sites}) > 1:
        ax.set_xticks(x, labels, rotation=60, fontsize=7)
        ax.set_xlabel("site")
    else:
        ax.set_xlabel(f"layer ({sites[0].split('.')[0]})")
    ax.set_ylabel("accuracy")
    ax.set_ylim(min(0.0, float(np.nanmin(result.column("selectivity") or [0]))) - 0.05, 1.05)
    ax.set_title(title or f"Linear probe sweep ({result.meta.get('cv')}-fold CV)")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
