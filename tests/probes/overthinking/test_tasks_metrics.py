"""Tasks, settings, metrics, head scores on synthetic patterns, and bad input (no model forward needed)."""

from __future__ import annotations

import random
import sys

import pytest
import torch
from toys import toy_model, toy_task

from lmscope.interventions.errors import InputError
from lmscope.probes.overthinking.heads import false_induction_terms, prefix_matching_terms, random_head_sets, top_heads
from lmscope.probes.overthinking.metrics import accuracy, calibrated_accuracy, critical_layer, gap_reduction
from lmscope.probes.overthinking.tasks import FewShotTask, build_prompts, load_task, shown_labels, task_names


@pytest.mark.parametrize("n_labels", [2, 3, 5])
def test_permuted_is_a_cyclic_shift_without_fixed_points(n_labels: int) -> None:
    for seed in range(30):
        true = [random.Random(seed).randrange(n_labels) for _ in range(9)]
        shown = shown_labels("permuted", true, n_labels, random.Random(seed))
        shifts = {(s - t) % n_labels for s, t in zip(shown, true)}
        assert len(shifts) == 1 and 0 not in shifts  # one shift for every demo, never the identity


def test_half_permutes_exactly_half_with_the_same_shift() -> None:
    for seed in range(30):
        true = [random.Random(seed + 100).randrange(3) for _ in range(10)]
        half = shown_labels("half", true, 3, random.Random(seed))
        perm = shown_labels("permuted", true, 3, random.Random(seed))
        changed = [i for i in range(10) if half[i] != true[i]]
        assert len(changed) == 5
        assert all(half[i] == perm[i] for i in changed)
    assert shown_labels("true", [0, 1, 2], 3, random.Random(0)) == [0, 1, 2]
    rnd = shown_labels("random", [0] * 200, 3, random.Random(0))
    assert set(rnd) == {0, 1, 2}


def test_prompts_show_what_the_setting_claims() -> None:
    model = toy_model()
    task = toy_task()
    sets = {s: build_prompts(model, task, s, n_prompts=6, n_demos=4, seed=1) for s in ("true", "permuted", "half")}
    tok = model.tokenizer
    for ps in sets.values():
        assert len(ps) == 6 and ps.n_demos == 4
        for i in range(6):
            assert len(ps.query_pos[i]) == 5 and len(ps.true[i]) == 5
            for k, pos in enumerate(ps.label_pos[i]):  # the shown label's first token sits right after query_pos
                assert ps.ids[i][pos] == ps.label_ids[ps.shown[i][k]]
                assert pos == ps.query_pos[i][k] + 1
                assert tok.decode([ps.ids[i][pos - 1]]) == ":"
            assert ps.query_pos[i][-1] == len(ps.ids[i]) - 1
    assert sets["true"].shown == [t[:-1] for t in sets["true"].true]
    assert all(a != b for row_s, row_t in zip(sets["permuted"].shown, sets["permuted"].true)
               for a, b in zip(row_s, row_t))
    assert [r[-1] for r in sets["true"].true] == [0, 1, 0, 1, 0, 1]  # balanced queries
    assert sets["true"].true == sets["permuted"].true  # paired design: same texts and true labels


def test_calibrated_accuracy_on_a_biased_toy_distribution() -> None:
    # every input prefers label 0, but the true label always gets a bump: argmax is right only on label 0
    n, k = 300, 3
    true = torch.arange(n) % k
    base = torch.tensor([0.6, 0.3, 0.1]).repeat(n, 1)
    probs = base + 0.05 * torch.nn.functional.one_hot(true, k)
    probs = probs / probs.sum(-1, keepdim=True)
    assert accuracy(probs, true).item() == pytest.approx(1 / 3)
    assert calibrated_accuracy(probs, true).item() == pytest.approx(1.0)
    # probabilities that carry no information about the label: calibrated accuracy near chance
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(3000, k, generator=gen).softmax(-1)
    t2 = torch.arange(3000) % k
    assert abs(calibrated_accuracy(noise, t2).item() - 1 / 3) < 0.05
    # layer axis broadcasts: [layers, inputs, labels]
    both = torch.stack([probs, probs[:, [1, 0, 2]]])
    assert calibrated_accuracy(both, true).shape == (2,)


def test_head_scores_on_a_synthetic_pattern() -> None:
    # 4 demos, labels shown [0, 1, 0, 1]; label tokens at columns 2, 5, 8, 11; query rows before each label
    label_cols = torch.tensor([[2, 5, 8, 11]])
    shown = torch.tensor([[0, 1, 0, 1]])
    pattern = torch.zeros(1, 2, 5, 14)
    # head 0: demo k attends 0.6 to the earlier label token that shows the same label, 0.1 to another one
    pattern[0, 0, 2, 2], pattern[0, 0, 2, 5] = 0.6, 0.1  # k=2 (shows 0): same = col 2, other = col 5
    pattern[0, 0, 3, 5], pattern[0, 0, 3, 2] = 0.6, 0.1  # k=3 (shows 1): same = col 5
    pattern[0, 0, 1, 2] = 0.3  # k=1 (shows 1): only other-label mass
    # head 1: attends only to other labels
    pattern[0, 1, 2, 5] = pattern[0, 1, 3, 8] = 0.5
    score, same, all_ = false_induction_terms(pattern, label_cols, shown, n_labels=2)
    assert score.shape == (1, 2, 3)  # demos 1..3
    assert torch.allclose(same[0, 0], torch.tensor([0.0, 0.6, 0.6]))
    assert torch.allclose(all_[0, 0], torch.tensor([0.3, 0.7, 0.7]))
    assert torch.allclose(score[0, 0], torch.tensor([-0.3, 0.5, 0.5]))
    assert torch.allclose(score[0, 1], torch.tensor([0.0, -0.5, -0.5]))
    # mass on a later label token (col 11 from row 2) never counts: it is not an earlier demo
    pattern[0, 0, 2, 11] = 0.2
    assert torch.allclose(false_induction_terms(pattern, label_cols, shown, 2)[0][0, 0], score[0, 0])
    # with 3 labels the other-label mass is divided by 2
    s3 = false_induction_terms(pattern, label_cols, shown, n_labels=3)[0]
    assert torch.allclose(s3[0, 0], torch.tensor([-0.15, 0.55, 0.55]))


def test_prefix_matching_on_synthetic_tokens() -> None:
    ids = torch.tensor([[0, 7, 3, 9, 7, 4, 9, 7]])  # left pad at col 0; token 7 at cols 1, 4, 7
    real = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1]])
    pattern = torch.zeros(1, 1, 1, 8)
    pattern[0, 0, 0, 2] = 0.25  # token after the first 7
    pattern[0, 0, 0, 5] = 0.5  # token after the second 7
    pattern[0, 0, 0, 3] = 0.25  # not after a 7
    got = prefix_matching_terms(pattern, torch.tensor([[7]]), ids, real)
    assert got.item() == pytest.approx(0.75)
    ids[0, 0] = 7  # a padding token equal to the query token never counts
    pattern[0, 0, 0, 1] = 0.1
    assert prefix_matching_terms(pattern, torch.tensor([[7]]), ids, real).item() == pytest.approx(0.75)


def test_top_heads_and_random_sets() -> None:
    s = torch.tensor([[0.1, 0.9], [0.5, -1.0], [0.7, 0.2]])
    assert top_heads(s, 2) == [(0, 1), (2, 0)]
    draws = random_head_sets(3, 2, 2, 50, seed=0)
    assert len(draws) == 50 and all(len(set(d)) == 2 for d in draws)
    assert draws == random_head_sets(3, 2, 2, 50, seed=0)
    assert gap_reduction(0.8, 0.4, 0.6) == pytest.approx(0.5)
    assert gap_reduction(0.8, 0.8, 0.6) != gap_reduction(0.8, 0.8, 0.6)  # NaN without a gap


def test_critical_layer_needs_a_gap_beyond_noise() -> None:
    n, layers = 200, 6
    gen = torch.Generator().manual_seed(0)
    ct = torch.ones(layers, n)
    acc_f = torch.tensor([1.0, 1.0, 0.9, 0.5, 0.4, 0.4])  # gap opens at layer 3 (0.5 >= 0.6/2)
    cf = (torch.rand(layers, n, generator=gen) < acc_f[:, None]).float()
    crit = critical_layer(ct, cf)
    assert crit.layer == 3 and crit.final_gap > 0.5
    assert crit.best_false_layer in (0, 1) and crit.best_false_acc == 1.0
    noise = (torch.rand(layers, n, generator=gen) < 0.5).float()
    same = critical_layer(noise, noise.roll(1, dims=1))
    assert same.layer is None and same.reason.startswith("no gap")


def test_bad_input_is_named() -> None:
    model = toy_model()
    with pytest.raises(InputError, match=r"'ab cd' and 'ab ef'.*same token ' ab'"):
        build_prompts(model, FewShotTask("t", [("x", "ab cd"), ("y", "ab ef")], ["ab cd", "ab ef"]), "true",
                      n_prompts=1, n_demos=1)
    with pytest.raises(InputError, match="has 16 examples; 20 demos plus a query need at least 21"):
        build_prompts(model, toy_task(), "true", n_prompts=1, n_demos=20)
    with pytest.raises(InputError, match="has label 'maybe', which is not one of"):
        FewShotTask("t", [("x", "yes"), ("y", "maybe")], ["yes", "no"])
    with pytest.raises(InputError, match="has no label word"):
        FewShotTask("t", [("x", "yes"), ("y", "")], ["yes", "no"])
    with pytest.raises(InputError, match="no input with label"):
        FewShotTask("t", [("x", "yes")], ["yes", "no"])
    with pytest.raises(InputError, match="Unknown task 'nope'"):
        load_task("nope")
    with pytest.raises(InputError, match="Unknown setting"):
        build_prompts(model, toy_task(), "flipped")
    assert "unnatural" in task_names() and "sst2" in task_names()


def test_hf_dataset_offline_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import types

    with pytest.raises(InputError, match="Cannot load the HF dataset 'sst2'.*offline"):
        load_task("SST-2")  # either 'datasets' is missing or the network is: a clear error either way

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setitem(sys.modules, "datasets", types.ModuleType("datasets"))
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(InputError, match="huggingface.co is unreachable"):
        load_task("agnews")
