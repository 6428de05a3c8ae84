"""``lmscope circuit``: writes the scores, circuit, plots and summary the API computes; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import build_tiny
from toys import CharTokenizer

from lmscope.interventions import cli
from lmscope.probes.circuits import Circuit, EdgeScores, edge_attribution, evaluate_circuit
from lmscope.probes.patching import logit_diff


@pytest.fixture
def tiny_cli(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from lmscope.interventions import HookedModel

    model = HookedModel(build_tiny("llama"), CharTokenizer())
    monkeypatch.setattr(HookedModel, "from_pretrained", classmethod(lambda cls, *a, **k: model))
    return model


def test_circuit_writes_what_the_api_computes(tiny_cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["circuit", "--clean", "abcdef", "--corrupt", "abXdef", "--target", "a", "--distractor", "b",
            "--method", "eap", "--top", "12", "--sizes", "3,10", "--n-random", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    for name in summary["files"]:
        assert (out / name).exists(), name
    scores = EdgeScores.load(out / "scores")
    api = edge_attribution(tiny_cli, "abcdef", "abXdef", logit_diff(tiny_cli, "a", "b"), method="eap")
    valid = api.graph.valid
    torch.testing.assert_close(scores.per_pair[0][valid], api.per_pair[0][valid])
    assert Circuit.load(out / "circuit").edges == api.circuit(k=12).edges
    assert summary["top_edges"][0]["edge"] == api.top(1)[0][0] and summary["pairs"] == 1
    saved = json.loads((out / "summary.json").read_text())
    assert [row["k"] for row in saved["curve"]["sizes"]] == [3, 10]
    kept = evaluate_circuit(tiny_cli, "abcdef", "abXdef", logit_diff(tiny_cli, "a", "b"), api.circuit(k=12))
    assert summary["circuit_faithfulness"]["faithfulness"] == pytest.approx(kept.faithfulness, abs=1e-4)
    assert f"keeps {kept.faithfulness:.1%}" in (out / "circuit.html").read_text()  # the title says what it keeps
    assert "http://" not in (out / "circuit.html").read_text() and (out / "faithfulness.png").stat().st_size > 0


def test_pairs_file_and_exact_method(tiny_cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                     capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"clean": "abcdef", "corrupt": "abXdef", "target": "a", "distractor": "b"}\n'
                     '{"clean": "bcdefg", "corrupt": "bcXefg", "target": "b", "distractor": "c"}\n')
    out = tmp_path / "exact"
    assert cli.main(["circuit", "--pairs", str(pairs), "--method", "exact", "--exact-edges", "15", "--top", "5",
                     "--sizes", "2", "--n-random", "0", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    scores = EdgeScores.load(out / "scores")
    assert summary["pairs"] == 2 and scores.method == "exact" and int(scores.scored().sum()) == 15


@pytest.mark.parametrize("extra, message", [
    ([], "Give the pairs one way"),
    (["--task", "ioi", "--clean", "abc"], "Give the pairs one way"),
    (["--clean", "abc", "--corrupt", "  ", "--target", "a"], "must all be given and non-empty"),
    (["--pairs", "missing.jsonl"], "is not a file"),
    (["--task", "ioi", "--sizes", "10,x"], "comma-separated list"),
    (["--task", "ioi", "--top", "0"], "--top must be a positive number"),
])
def test_bad_input_exits_2_before_loading(extra: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["circuit", *extra, "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err


def test_another_artifact_is_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lens"
    out.mkdir()
    (out / "lens.safetensors").write_bytes(b"x")
    assert cli.main(["circuit", "--task", "ioi", "--out", str(out)]) == 2
    assert "already holds a tuned lens" in capsys.readouterr().err


def test_circuit_study_runs_and_round_trips(tmp_path: Path) -> None:
    """The notebook's study on a tiny model: agreement, curve, head comparison; saved and loaded back."""
    from toys import FakeTokenizer

    from lmscope.interventions import HookedModel
    from lmscope.probes.circuits import ioi_pairs
    from lmscope.probes.circuits.study import CircuitStudy, circuit_study

    model = HookedModel(build_tiny("llama"), FakeTokenizer())
    task = ioi_pairs(model, 4)
    study = circuit_study(model, task, n_exact=40, n_random=2, sizes=[5, 20], progress=False)
    report = study.report
    assert len(report["sampled"]["edges"]) == 40 and report["sampled"]["n_uniform"] == 20
    for method in ("eap", "eap-ig"):
        assert -1 <= report["agreement"][method]["all"]["pearson"] <= 1
    exact = torch.tensor(report["sampled"]["exact"])
    assert exact.abs().max() > 0 and len(report["heads"]["exact"]) == model.n_layers
    study.save(tmp_path / "study", per_pair=True)
    back = CircuitStudy.load(tmp_path / "study")
    assert back.report == json.loads(json.dumps(report)) and back.task["name"] == "ioi"
    assert torch.equal(back.scores["eap-ig"].per_pair.nan_to_num(7), study.scores["eap-ig"].per_pair.nan_to_num(7))
    study.save(tmp_path / "small")  # the default keeps the mean over pairs only
    small = CircuitStudy.load(tmp_path / "small").scores["eap-ig"]
    assert small.n_pairs == 1 and small.info["pairs_averaged"] == 4
    assert torch.equal(small.mean.nan_to_num(7), study.scores["eap-ig"].mean.nan_to_num(7))


def test_a_drawn_circuit_of_a_curve_size_reuses_that_point(tiny_cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """--top equal to one of --sizes: the drawn circuit is the curve's circuit of that size, and so is its number."""
    out = tmp_path / "run"
    assert cli.main(["circuit", "--clean", "abcdef", "--corrupt", "abXdef", "--target", "a", "--distractor", "b",
                     "--method", "eap", "--top", "10", "--sizes", "3,10", "--n-random", "0", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    row = json.loads((out / "summary.json").read_text())["curve"]["sizes"][1]
    assert row["k"] == 10 and summary["circuit_faithfulness"]["faithfulness"] == round(row["faithfulness"], 4)
    api = edge_attribution(tiny_cli, "abcdef", "abXdef", logit_diff(tiny_cli, "a", "b"), method="eap")
    kept = evaluate_circuit(tiny_cli, "abcdef", "abXdef", logit_diff(tiny_cli, "a", "b"), api.circuit(k=10))
    assert row["faithfulness"] == pytest.approx(kept.faithfulness, abs=1e-4)
