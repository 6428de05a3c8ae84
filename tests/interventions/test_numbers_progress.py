"""The shared report helpers: float32 numbers in short decimals, progress bars only on a terminal."""

from __future__ import annotations

import ast
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from toys import FakeTerminal
from tqdm.auto import tqdm

from lmscope.interventions.numbers import float32_clean, float32_clean_all
from lmscope.interventions.progress import bar_disable

PACKAGE = Path(__file__).resolve().parents[2]


def test_a_float32_value_comes_out_as_its_short_decimal() -> None:
    noisy = float(torch.tensor([1.0] * 4 + [0.0] * 96).mean())  # 4/100 in float32
    assert noisy == 0.03999999910593033
    assert float32_clean(noisy) == 0.04 and repr(float32_clean(noisy)) == "0.04"


def test_float32_clean_keeps_the_float32_value_exactly() -> None:
    values = np.random.default_rng(0).standard_normal(2000).astype(np.float32) * np.float32(1e3)
    values = np.concatenate([values, np.float32([1e-30, 3e38, -0.0, 1 / 3])])
    for v in values:
        clean = float32_clean(float(v))
        assert np.float32(clean) == v and len(repr(clean)) <= 16  # at most 9 digits, sign, point and exponent
    assert math.isnan(float32_clean(float("nan"))) and float32_clean(float("-inf")) == float("-inf")


def test_float32_clean_all_cleans_floats_only() -> None:
    t = torch.tensor([0.1])
    data = {"acc": [0.03999999910593033, (0.6666666865348816, 2)], "n": 3, "ok": True, "name": "x", "none": None,
            "nested": {"t": t}}
    out = float32_clean_all(data)
    assert out == {"acc": [0.04, [0.6666667, 2]], "n": 3, "ok": True, "name": "x", "none": None,
                   "nested": {"t": t}}
    assert out["nested"]["t"] is t and type(out["n"]) is int and type(out["ok"]) is bool
    assert data["acc"][0] == 0.03999999910593033  # the input is not modified


@pytest.mark.parametrize("progress, terminal, drawn", [(True, True, True), (True, False, False),
                                                       (False, True, False), (False, False, False)])
def test_bar_only_on_a_terminal_and_only_with_progress(progress: bool, terminal: bool, drawn: bool) -> None:
    stream = FakeTerminal() if terminal else io.StringIO()
    for _ in tqdm(range(3), desc="working", disable=bar_disable(progress), file=stream):
        pass
    assert ("working" in stream.getvalue()) == drawn, stream.getvalue()


def _tqdm_calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) == "tqdm" or getattr(n.func, "attr", None) == "tqdm")]


def test_every_library_bar_is_disabled_through_the_helper() -> None:
    """Each tqdm bar of the packages passes ``disable=bar_disable(...)`` (``disable=not progress`` would draw
    bars into log files and pipes)."""
    bad, seen = [], 0
    for folder in ("interventions", "lens", "probes"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for call in _tqdm_calls(ast.parse(path.read_text())):
                seen += 1
                disable = next((k.value for k in call.keywords if k.arg == "disable"), None)
                if not (isinstance(disable, ast.Call) and getattr(disable.func, "id", None) == "bar_disable"):
                    bad.append(f"{path.relative_to(PACKAGE)}:{call.lineno}")
    assert seen >= 20 and not bad, bad
