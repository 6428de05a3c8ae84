"""The shared plotting helper (heat map, line plot, panels) and the atomic figure write under it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lmscope.interventions.artifacts import atomic_save_figure
from lmscope.interventions.errors import InputError
from lmscope.probes.plotting import Series, heatmap, line_plot, panels, save_figure

PNG = b"\x89PNG\r\n\x1a\n"


def test_heatmap_labels_colorbar_and_png(tmp_path: Path) -> None:
    values = torch.arange(6, dtype=torch.float32).reshape(2, 3) - 2  # tensors are accepted as they are
    fig = heatmap(values, row_labels=["L0", "L1"], col_labels=["h0", "h1", "h2"], xlabel="head", ylabel="layer",
                  cbar_label="score", center=0.0, annotate="{:.1f}", title="t", path=tmp_path / "sub" / "h.png")
    ax, cbar = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["L0", "L1"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["h0", "h1", "h2"]
    assert ax.get_xlabel() == "head" and ax.get_ylabel() == "layer" and cbar.get_ylabel() == "score"
    assert ax.images[0].get_clim() == (-3.0, 3.0)  # symmetric around center
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{v:.1f}" for v in values.flatten().tolist())
    assert (tmp_path / "sub" / "h.png").read_bytes()[:8] == PNG
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["h.png"]  # no temporary file left behind


def test_heatmap_bad_input() -> None:
    with pytest.raises(InputError, match="2-D"):
        heatmap([1.0, 2.0])
    with pytest.raises(InputError, match="row_labels has 3 labels for 2 rows"):
        heatmap(np.zeros((2, 2)), row_labels=["a", "b", "c"])
    with pytest.raises(InputError, match="origin"):
        heatmap(np.zeros((2, 2)), origin="middle")


def test_line_plot_series_band_and_reference(tmp_path: Path) -> None:
    x = np.arange(4)
    grid = np.linspace(0, 3, 7)
    fig = line_plot(x, {"a": [1, 2, 3, 4], "b": Series([0, 1, 0, 1], band=([0, 0, 0, 0], [1, 2, 1, 2])),
                        "fit": Series(grid ** 2, x=grid, style="--")}, reference={"chance": 0.5},
                    xticklabels=["r0", "r1", "r2", "r3"], xlabel="layer", ylabel="KL", path=tmp_path / "l.svg")
    (ax,) = fig.axes
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"a", "b", "fit", "chance"}
    np.testing.assert_array_equal(lines["fit"].get_xdata(), grid)
    assert lines["fit"].get_linestyle() == "--" and list(lines["chance"].get_ydata()) == [0.5, 0.5]
    assert len(ax.collections) == 1  # the band of "b"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["r0", "r1", "r2", "r3"]
    assert (tmp_path / "l.svg").read_text().lstrip().startswith("<?xml")


def test_line_plot_bad_input() -> None:
    with pytest.raises(InputError, match="at least one series"):
        line_plot([0, 1], {})
    with pytest.raises(InputError, match="3 values for 2 x positions"):
        line_plot([0, 1], {"a": [1, 2, 3]})
    with pytest.raises(InputError, match="band"):
        line_plot([0, 1], {"a": Series([1, 2], band=([0], [1]))})


def test_panels_compose_and_save(tmp_path: Path) -> None:
    fig, axes = panels(3, ncols=2)
    assert len(axes) == 3 and sum(ax.get_visible() for ax in fig.axes) == 3  # the 4th slot is hidden
    assert line_plot([0, 1], {"a": [0, 1]}, ax=axes[0]) is fig
    assert heatmap(np.eye(2), ax=axes[1]) is fig
    assert save_figure(fig, tmp_path / "p.png").read_bytes()[:8] == PNG
    with pytest.raises(InputError):
        panels(0)


def test_atomic_save_figure_keeps_old_file_on_failure(tmp_path: Path) -> None:
    class Broken:
        def savefig(self, buf, format, dpi):  # noqa: A002 - matplotlib's argument name
            buf.write(b"partial")
            raise RuntimeError("render failed")

    out = tmp_path / "f.png"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        atomic_save_figure(Broken(), out)
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.png"]
    with pytest.raises(InputError, match="Cannot save a figure as 'f.txt'"):
        atomic_save_figure(Broken(), tmp_path / "f.txt")
