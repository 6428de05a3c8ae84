"""Figures of the overthinking study: each function returns a ``matplotlib.figure.Figure`` built without
pyplot (no global state, nothing shown by itself; save with ``fig.savefig``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(**kwargs: Any) -> Figure:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def accuracy_figure(tables: dict[str, dict[str, dict[str, list[list[float]]]]], critical: dict[str, Any],
                    n_labels: int, title: str) -> Figure:
    """Accuracy (left) and calibrated accuracy (right) over layers at the final k, one line per lens x setting."""
    fig = _figure(figsize=(11, 4))
    axes = fig.subplots(1, 2, sharey=True)
    styles = {"logit": "-", "tuned": "--"}
    for ax, key, name in zip(axes, ("acc", "cal"), ("accuracy", "calibrated accuracy")):
        for lens, per_setting in tables.items():
            for setting, t in per_setting.items():
                curve = [row[-1] for row in t[key]]
                ax.plot(curve, styles.get(lens, ":"), label=f"{setting} ({lens} lens)")
            layer = critical.get(lens, {}).get("layer")
            if layer is not None and key == "acc":
                ax.axvline(layer, color="grey", lw=0.8, ls=":")
        ax.axhline(1 / n_labels, color="black", lw=0.6, ls=":")
        ax.set_xlabel("layer")
        ax.set_title(name)
    axes[0].set_ylabel("label accuracy at the query")
    axes[1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def demos_figure(tables: dict[str, dict[str, dict[str, list[list[float]]]]], lens: str, title: str) -> Figure:
    """Final-layer accuracy against the number of demos, per setting."""
    fig = _figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for setting, t in tables[lens].items():
        ax.plot(t["acc"][-1], marker="o", ms=3, label=setting)
    ax.set_xlabel("number of demos before the position (k-shot)")
    ax.set_ylabel("final-layer accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def heads_figure(scores: list[list[float]], prefix: list[list[float]], top: list[list[int]], title: str) -> Figure:
    """Layer x head heat maps of the false-induction and prefix-matching scores (top heads circled)."""
    import numpy as np

    fig = _figure(figsize=(9, 6))
    axes = fig.subplots(1, 2)
    for ax, data, name, cmap in zip(axes, (scores, prefix), ("false-induction score", "prefix-matching score"),
                                    ("RdBu_r", "viridis")):
        arr = np.asarray(data)
        lim = float(np.abs(arr).max()) or 1.0
        im = ax.imshow(arr, aspect="auto", cmap=cmap, origin="lower",
                       **({"vmin": -lim, "vmax": lim} if cmap == "RdBu_r" else {}))
        for layer, h in top:
            ax.scatter([h], [layer], s=60, facecolors="none", edgecolors="black")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(name)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def ablation_figure(ablation: dict[str, Any], title: str) -> Figure:
    """Gap reduction of the top-k heads vs random heads (mean +- std over draws), per ablation method."""
    methods = list(ablation["methods"])
    fig = _figure(figsize=(6, 3.5))
    ax = fig.subplots()
    xs = range(len(methods))
    top = [ablation["methods"][m]["top"]["gap_reduction"] for m in methods]
    rnd = [ablation["methods"][m]["random"]["gap_reduction_mean"] for m in methods]
    err = [ablation["methods"][m]["random"]["gap_reduction_std"] for m in methods]
    ax.bar([x - 0.2 for x in xs], top, width=0.4, label=f"top-{ablation['k']} heads")
    ax.bar([x + 0.2 for x in xs], rnd, width=0.4, yerr=err, capsize=3,
           label=f"{ablation['k']} random heads ({ablation['n_random']} draws)")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(list(xs), methods)
    ax.set_ylabel("gap reduction")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
