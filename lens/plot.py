"""Trajectory heatmaps: PNG (matplotlib, Agg) or self-contained interactive HTML (plotly, js embedded)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmscope.interventions.errors import InputError

if TYPE_CHECKING:
    from .trajectory import Trajectory

RASTER = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def _values(traj: Trajectory, color: str) -> tuple[Any, str]:
    if color == "prob":
        return traj.top_probs[:, :, 0].numpy(), "top-1 probability"
    if color == "kl":
        return traj.kl.numpy(), "KL(output || lens), nats"
    raise InputError(f"color must be 'prob' or 'kl', got {color!r}.")


_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍", "\x7f": "␡", "\xa0": "⍽"}


def visible_token(tok: str) -> str:
    """A token with whitespace and control characters drawn visibly (``" Paris"`` -> ``"␣Paris"``, ``""`` -> ``"∅"``).

    The same mapping as the web explorer's (``lens/serve/static/app.js``), so a top token that is a space
    never shows as a blank cell.
    """
    if not tok:
        return "∅"
    out = []
    for ch in tok:
        c = ord(ch)
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif c < 0x20:
            out.append(chr(0x2400 + c))
        elif 0x80 <= c < 0xA0 or c in (0x200B, 0xFEFF, 0xFFFD):
            out.append(f"\\u{c:04x}")
        else:
            out.append(ch)
    return "".join(out)


#: A default title quotes at most this much of the prompt (then "…"); what it quotes wraps onto several lines.
MAX_PROMPT_CHARS = 240
#: Average glyph width of matplotlib's default font (DejaVu Sans), in font sizes: sets the wrap width of titles.
_GLYPH_EM = 0.6


def wrap_title(title: str, width_inches: float, fontsize: float = 10.0) -> str:
    """``title`` broken into lines that fit ``width_inches`` at ``fontsize`` points (a figure never clips a title
    at its edges: matplotlib centres a title over its axes and cuts what runs past the figure)."""
    import textwrap

    chars = max(12, int(width_inches * 72 / (fontsize * _GLYPH_EM)))
    return "\n".join(textwrap.fill(line, chars) for line in title.splitlines() or [""])


def set_wrapped_title(fig: Any, ax: Any, title: str, fontsize: float = 10.0) -> None:
    """Give ``ax`` ``title`` wrapped to the narrower of the axes' width and the figure, then lay the figure out
    again (the title's height changed)."""
    fig.tight_layout()
    width = min(ax.get_position().width * fig.get_figwidth(), fig.get_figwidth())
    ax.set_title(wrap_title(title, width, fontsize), fontsize=fontsize)
    fig.tight_layout()


def _label(tok: str, width: int = 8) -> str:
    s = visible_token(tok)
    return s if len(s) <= width else s[: width - 1] + "…"


def plot_trajectory(traj: Trajectory, path: str | os.PathLike[str], color: str = "prob",
                    title: str | None = None) -> Path:
    """Write ``traj`` as a heatmap to ``path``; the suffix picks the backend (see :meth:`Trajectory.plot`)."""
    out = Path(path)
    suffix = out.suffix.lower()
    values, cbar = _values(traj, color)
    if title is None:
        prompt = traj.prompt or ""
        prompt = prompt if len(prompt) <= MAX_PROMPT_CHARS else prompt[:MAX_PROMPT_CHARS] + "…"
        name = traj.lens.replace(" (", " lens (", 1) if " (" in traj.lens else f"{traj.lens} lens"
        title = name + (f": {prompt!r}" if prompt else "")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".html":
        _plotly(traj, out, values, cbar, color, title)
    elif suffix in RASTER:
        _matplotlib(traj, out, values, cbar, color, title)
    else:
        raise InputError(f"Cannot plot to {out.name!r}: use a .png (matplotlib) or .html (plotly) file.")
    return out


def _xlabels(traj: Trajectory) -> list[str]:
    return [f"{p}:{_label(t)}" for p, t in zip(traj.positions, traj.tokens)]


def _matplotlib(traj: Trajectory, out: Path, values: Any, cbar: str, color: str, title: str) -> None:
    import matplotlib.pyplot as plt

    from lmscope.interventions.artifacts import atomic_save_figure

    n_r, n_p = values.shape
    fig, ax = plt.subplots(figsize=(min(40.0, 2.0 + 0.9 * n_p), min(60.0, 1.5 + 0.28 * n_r)))
    cmap = "Blues" if color == "prob" else "Reds"
    vmax = 1.0 if color == "prob" else max(float(values.max()), 1e-6)
    im = ax.imshow(values, aspect="auto", origin="lower", cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    for r in range(n_r):
        for c in range(n_p):
            dark = values[r, c] > 0.6 * vmax
            ax.text(c, r, _label(traj.top_tokens[r][c][0]), ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    ax.set_xticks(range(n_p), _xlabels(traj), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n_r), traj.readings, fontsize=7)
    fig.colorbar(im, ax=ax, label=cbar)
    set_wrapped_title(fig, ax, title)
    plt.close(fig)  # detach from pyplot (no backend is forced; headless runs fall back to Agg)
    atomic_save_figure(fig, out, dpi=120)


def _plotly(traj: Trajectory, out: Path, values: Any, cbar: str, color: str, title: str) -> None:
    import plotly.graph_objects as go

    text = [[_label(traj.top_tokens[r][c][0]) for c in range(values.shape[1])] for r in range(values.shape[0])]
    hover = [[
        "<br>".join([f"{traj.readings[r]} @ {traj.positions[c]} {traj.tokens[c]!r}",
                     f"entropy {float(traj.entropy[r, c]):.2f} nats, KL {float(traj.kl[r, c]):.3f} nats"]
                    + [f"{traj.top_tokens[r][c][k]!r}: {float(traj.top_probs[r, c, k]):.3f}"
                       for k in range(len(traj.top_tokens[r][c]))])
        for c in range(values.shape[1])] for r in range(values.shape[0])]
    fig = go.Figure(go.Heatmap(
        z=values, x=_xlabels(traj), y=traj.readings, text=text, texttemplate="%{text}", customdata=hover,
        hovertemplate="%{customdata}<extra></extra>", colorscale="Blues" if color == "prob" else "Reds",
        zmin=0.0, zmax=1.0 if color == "prob" else None, colorbar={"title": {"text": cbar}}))
    fig.update_layout(title=title, height=max(400, 22 * len(traj.readings) + 150),
                      yaxis={"type": "category"}, xaxis={"type": "category"})
    from lmscope.interventions.artifacts import atomic_write_text

    atomic_write_text(out, fig.to_html(include_plotlyjs=True, full_html=True))  # js embedded: works offline
