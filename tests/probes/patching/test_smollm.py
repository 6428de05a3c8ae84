"""SmolLM2 (slow): exact sweep == Patch loop on real weights, attribution patching tracks the exact map, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmscope.interventions import cli
from lmscope.probes.patching import head_sweep, logit_diff, patching_sweep

pytestmark = pytest.mark.slow
CLEAN = "When Mary and John went to the store yesterday, John gave a cold drink to"
CORRUPT = "When Mary and John went to the store yesterday, Mary gave a cold drink to"


def test_exact_equals_loop_and_attribution_correlates(smollm) -> None:
    metric = logit_diff(smollm, " Mary", " John")
    layers = list(range(0, smollm.n_layers, 3))  # 10 layers x 16 positions (the benchmark runs all 30)
    exact = patching_sweep(smollm, CLEAN, CORRUPT, [f"resid_pre.{i}" for i in layers], None, metric)
    loop = patching_sweep(smollm, CLEAN, CORRUPT, ["resid_pre.3", "resid_pre.21"], [0, 8, 9, 15], metric,
                          method="loop")
    torch.testing.assert_close(exact.values[[1, 7]][:, [0, 8, 9, 15]], loop.values, atol=1e-4, rtol=1e-4)
    # the IOI signal: the clean answer is " Mary", the corrupt one " John"; patching layer 0 at the one token
    # that differs (position 10) is the whole clean run
    assert exact.source_metric > 3 and exact.base_metric < -3
    assert exact.col_labels[10] == "10: Mary"  # labels are the base (corrupt) run's tokens
    assert abs(float(exact.normalized()[0, 10]) - 1) < 1e-4
    atp = patching_sweep(smollm, CLEAN, CORRUPT, [f"resid_pre.{i}" for i in layers], None, metric,
                         method="attribution")
    r = float(np.corrcoef(atp.values.flatten().numpy(), exact.values.flatten().numpy())[0, 1])
    assert r > 0.6  # 0.80 over all 480 cells (benchmarks/RESULTS.md)


def test_dataset_head_sweep_equals_single_pairs_and_loop(smollm) -> None:
    """Two IOI pairs of different lengths, each with its own answer: per-pair maps equal single-pair sweeps and
    the Patch loop on real weights."""
    clean = [CLEAN, "When John and Mary went to the park, Mary gave a ball to"]
    corrupt = [CORRUPT, "When John and Mary went to the park, John gave a ball to"]
    metrics = [logit_diff(smollm, " Mary", " John"), logit_diff(smollm, " John", " Mary")]
    data = head_sweep(smollm, clean, corrupt, metrics, layers=[20, 23], positions=[-1, 3])
    loop = head_sweep(smollm, clean, corrupt, metrics, layers=[20, 23], positions=[-1, 3], method="loop")
    torch.testing.assert_close(data.per_pair, loop.per_pair, atol=1e-4, rtol=1e-4)
    for i in range(2):
        single = head_sweep(smollm, clean[i], corrupt[i], metrics[i], layers=[20, 23], positions=[-1, 3])
        torch.testing.assert_close(data.per_pair[i], single.values, atol=1e-4, rtol=1e-4)
    assert data.by_head(positions=True).shape == (2, smollm.n_heads, 2) and min(data.pair_source_metrics) > 0


def test_cli_on_smollm(use_smollm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["patch", "--clean", CLEAN, "--corrupt", CORRUPT, "--target", " Mary", "--distractor",
                     " John", "--site", "attn_out", "--layers", "-4,-1", "--out", str(tmp_path / "m")]) == 0
    data = json.loads((tmp_path / "m" / "patching.json").read_text())
    assert data["rows"] == ["attn_out.26", "attn_out.29"] and len(data["cols"]) == 16
    assert json.loads(capsys.readouterr().out)["base_metric"] < 0
