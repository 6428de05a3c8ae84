"""Layer × head heat map of direct logit attribution, with the per-layer MLP and attention-bias terms beside it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .dataset import DatasetAttribution
    from .dla import Attribution


def plot_attribution(attr: Attribution | DatasetAttribution, path: str | os.PathLike[str] | None = None,
                     title: str | None = None) -> Any:
    """Heads (layer × head, diverging colours centred at 0) and the MLP/embedding terms (a dataset's means);
    returns the figure."""
    import matplotlib

    if path is not None and matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    heads = attr.heads.numpy()
    L, H = heads.shape
    vmax = float(np.nanmax(np.abs(np.concatenate([heads.ravel(), attr.mlp.numpy()])))) or 1.0
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(4 + 0.35 * H, 1.5 + 0.22 * L),
                                 gridspec_kw={"width_ratios": [H, 3]}, sharey=True)
    im = ax.imshow(heads, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(H))
    side = np.stack([attr.mlp.numpy(), attr.attn_bias.numpy(),
                     np.r_[attr.embed, np.zeros(L - 1)]], axis=1)
    bx.imshow(side, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    bx.set_xticks(range(3), ["MLP", "attn bias", "embed"], rotation=45, fontsize=8)
    fig.colorbar(im, ax=[ax, bx], shrink=0.8, label="direct logit contribution")
    target = repr(attr.labels[0]) + (f" − {attr.labels[1]!r}" if attr.labels[1] is not None else "")
    ax.set_title(title or f"DLA of {target}: logit {attr.logit:.2f} (sum of terms {attr.total:.2f})", fontsize=9)
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig
