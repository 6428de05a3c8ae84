"""``lmscope overthinking`` and the real model: user errors (fast), tasks and the CLI on SmolLM2 (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from notebook_runner import run_notebook

from lmscope.interventions import cli

NOTEBOOK = Path(__file__).parents[3] / "notebooks" / "overthinking.ipynb"


@pytest.mark.parametrize("argv, message", [
    (["overthinking", "--task", "nope"], "Unknown task 'nope'"),
    (["overthinking", "--task", "category", "--n-demos", "0"], "--n-demos must be at least 1"),
    (["overthinking", "--task", "category", "--score-task", "sst2"], "Cannot load the HF dataset 'sst2'"),
])
def test_user_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


@pytest.mark.slow
def test_builtin_tasks_on_the_real_tokenizer(smollm) -> None:
    from lmscope.lens import LogitLens
    from lmscope.probes.overthinking import build_prompts, read_labels
    from lmscope.probes.overthinking.tasks import _builtin

    for name in _builtin():
        ps = build_prompts(smollm, name, "permuted", n_prompts=4, n_demos=12)
        assert len(set(ps.label_ids)) == len(ps.labels)
        text = smollm.tokenizer.decode(ps.ids[0])
        assert text.count("Answer:") == 13 and text.endswith("Answer:")
        # piecewise token ids are exactly how the tokenizer splits the whole prompt
        assert smollm.tokenizer(text)["input_ids"] == ps.ids[0], name
    # the last layer's label probabilities are the model's own output renormalised over the labels
    ps = build_prompts(smollm, "category", "true", n_prompts=3, n_demos=4)
    probs = read_labels(smollm, ps, {"logit": LogitLens(smollm)}, progress=False).probs["logit"]
    logits = smollm.run(ps.ids).last_logits()[:, ps.label_ids]
    assert torch.allclose(probs[-1, :, -1], logits.softmax(-1), atol=1e-4)



@pytest.mark.slow
def test_cli_prints_critical_layer_heads_and_gap(use_smollm, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    assert cli.main(["overthinking", "--task", "category", "--n-prompts", "3", "--n-demos", "3", "--n-random", "1",
                     "--lens", "logit", "--top-k", "2", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "critical layer" in text and "top-2 false-induction heads" in text and "gap reduction" in text
    report = json.loads((out / "report.json").read_text())
    assert len(report["heads"]["false_induction"]) == 30 and len(report["heads"]["top"]) == 2
    assert (out / "accuracy_layers.png").stat().st_size > 0


@pytest.mark.slow
def test_overthinking_notebook_runs(smollm) -> None:
    outputs, text = run_notebook(NOTEBOOK.name, timeout=900)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4
    assert "critical layer" in text and "gap reduction" in text


@pytest.mark.slow
def test_batched_ablation_configs_equal_the_loop_on_smollm(smollm) -> None:
    """Prompts x configurations in one final-token forward == one forward per configuration (SmolLM2)."""
    from lmscope.probes.overthinking import build_prompts
    from lmscope.probes.overthinking.final_token import final_label_probs
    from lmscope.probes.overthinking.heads import random_head_sets

    ps = build_prompts(smollm, "category", "permuted", n_prompts=3, n_demos=3, seed=0)
    draws = random_head_sets(smollm.n_layers, smollm.n_heads, 5, 2, seed=0)
    configs: dict = {"none": ((), "zero")}
    for m in ("zero", "mean", "qkv"):
        for i, d in enumerate(draws):
            configs[f"{m}/{i}"] = (d, m)
    loop = final_label_probs(smollm, ps, configs, batch_size=3, progress=False, batch_configs=False)
    batched = final_label_probs(smollm, ps, configs, batch_size=3, progress=False)
    for name in loop:
        assert torch.allclose(batched[name], loop[name], atol=1e-5, rtol=0), name
