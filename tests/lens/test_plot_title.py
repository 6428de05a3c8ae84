"""Figure titles stay inside the figure: a long title (a long prompt, a long lens description) wraps onto several
lines instead of running off the figure's edges, for the lens heatmap and the method plots alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from lmscope.interventions import HookedModel, artifacts
from lmscope.lens import LogitLens

LONG = ("When Mary and John went to the store yesterday afternoon, John gave a cold drink to his friend, who thanked "
        "him and walked home along the river")


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures written through atomic_save_figure, kept for inspection."""
    figures: list[Any] = []
    write = artifacts.atomic_save_figure

    def keep(fig: Any, path: Any, dpi: int = 110) -> Path:
        figures.append(fig)
        return write(fig, path, dpi=dpi)

    monkeypatch.setattr(artifacts, "atomic_save_figure", keep)
    return figures


def assert_inside(fig: Any, title: Any) -> None:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box, frame = title.get_window_extent(canvas.get_renderer()), fig.bbox
    assert title.get_text()
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, (box, frame)


def test_lens_heatmap_title_wraps_inside_the_figure(llama_tiny: HookedModel, saved: list[Any], tmp_path: Path) -> None:
    traj = LogitLens(llama_tiny).decode([5, 9, 13, 2], top_k=1)  # 4 positions: a narrow figure
    traj.prompt = LONG
    traj.plot(tmp_path / "h.png")
    title = saved[-1].axes[0].title
    assert_inside(saved[-1], title)
    assert "\n" in title.get_text() and title.get_text().replace("\n", " ") == f"logit lens: {LONG!r}"  # wrapped
    traj.plot(tmp_path / "t.png", title="tuned (SmolLM2-135M-Instruct-618e699f2a-tuned; fitted on literature, "
                                        "technical, legal English) lens, a long description indeed")
    assert_inside(saved[-1], saved[-1].axes[0].title)


def test_method_plot_title_wraps_inside_the_figure(saved: list[Any], tmp_path: Path) -> None:
    from lmscope.probes.plotting import heatmap

    fig = heatmap(np.arange(6.0).reshape(2, 3), title=f"Patching: {LONG}", path=tmp_path / "p.png")
    assert_inside(fig, fig.axes[0].title)
