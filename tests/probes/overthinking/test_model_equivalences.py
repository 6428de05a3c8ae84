"""Exact equivalences on tiny random models: lens readings, batching, ablations by hand, the study."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import TEST_DEVICE
from toys import toy_model, toy_task

from lmscope.interventions import Cache, HookedModel
from lmscope.interventions.base import Intervention, load_interventions, save_interventions
from lmscope.interventions.errors import ArtifactError, InputError
from lmscope.interventions.tolerance import assert_close
from lmscope.lens import LogitLens, TunedLens
from lmscope.probes.overthinking.ablation import METHODS, HeadQKVAblate, head_ablation
from lmscope.probes.overthinking.final_token import final_label_probs
from lmscope.probes.overthinking.heads import batched_head_scores, naive_head_scores
from lmscope.probes.overthinking.readings import label_logits, read_labels
from lmscope.probes.overthinking.study import run_study
from lmscope.probes.overthinking.tasks import PromptSet, build_prompts


def _prompts(model: HookedModel, setting: str = "permuted", n: int = 5, demos: int = 4) -> PromptSet:
    ps = build_prompts(model, toy_task(), setting, n_prompts=n, n_demos=demos, seed=3)
    lengths = {len(i) for i in ps.ids}
    assert len(lengths) > 1, "the test needs prompts of different lengths"
    return ps


def test_last_layer_probs_equal_the_model_output_renormalised() -> None:
    model = toy_model("llama")
    ps = _prompts(model)
    r = read_labels(model, ps, {"logit": LogitLens(model)}, batch_size=2, progress=False)
    for i in range(len(ps)):
        logits = model.run([ps.ids[i]]).logits[0, ps.query_pos[i]]
        want = logits[:, ps.label_ids].softmax(-1)
        full = logits.softmax(-1)[:, ps.label_ids]
        assert torch.allclose(want, full / full.sum(-1, keepdim=True), atol=1e-6)
        assert torch.allclose(r.probs["logit"][-1, i], want.cpu(), atol=1e-5)  # readings are kept on the CPU


def test_label_logits_equal_full_lens_decoding() -> None:
    model = toy_model("gemma")  # embedding scale, tied unembedding
    lens = TunedLens(model)
    g = torch.Generator().manual_seed(0)  # drawn on the CPU: the same translators on every device
    with torch.no_grad():
        lens.weight.copy_(0.05 * torch.randn(lens.weight.shape, generator=g))
        lens.bias.copy_(0.1 * torch.randn(lens.bias.shape, generator=g))
    h = torch.randn(2, 3, model.d_model, generator=g)
    ids = [5, 9, 2]
    for i in (0, 2):
        assert torch.allclose(label_logits(lens, h, i, ids), lens.logits(h, i)[..., ids], atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_batched_prompts_of_different_lengths_equal_unbatched(name: str) -> None:
    model = toy_model(name)
    ps = _prompts(model)
    lenses = {"logit": LogitLens(model)}
    batched = read_labels(model, ps, lenses, batch_size=5, head_scores=True, progress=False)
    single = read_labels(model, ps, lenses, batch_size=1, head_scores=True, progress=False)
    assert torch.allclose(batched.probs["logit"], single.probs["logit"], atol=1e-5)
    assert batched.heads is not None and single.heads is not None
    for key, value in batched.heads.means().items():
        assert torch.allclose(value, single.heads.means()[key], atol=1e-5), key


def test_one_forward_head_scores_equal_the_per_head_loop() -> None:
    model = toy_model("llama")
    ps = _prompts(model)
    fast = batched_head_scores(model, ps, batch_size=3)
    slow = naive_head_scores(model, ps, batch_size=2)
    for key in fast:
        assert torch.allclose(fast[key], slow[key], atol=1e-5), key
    assert fast["false_induction"].shape == (model.n_layers, model.n_heads)
    assert fast["prefix_matching"].abs().sum() > 0


def _by_hand_head_z_zero(model: HookedModel, layer: int, head: int) -> torch.utils.hooks.RemovableHandle:
    """Zero one head's slice of the o_proj input at the last column (prompts are left-padded)."""
    o_proj = model.module(f"{model.arch.layers}.{layer}.{model.arch.attn}.{model.arch.o_proj}")
    d = model.d_head

    def pre(module: torch.nn.Module, args: tuple) -> tuple:
        x = args[0].clone()
        x[:, -1, head * d:(head + 1) * d] = 0
        return (x, *args[1:])

    return o_proj.register_forward_pre_hook(pre)


def test_zero_ablation_equals_zeroing_head_z_by_hand() -> None:
    model = toy_model("llama")
    ps = _prompts(model, "true")
    heads = [(1, 2), (2, 0)]
    got = final_label_probs(model, ps, {"zero": lambda: head_ablation(heads, "zero")}, batch_size=2,
                            progress=False)["zero"]
    handles = [_by_hand_head_z_zero(model, layer, h) for layer, h in heads]
    try:
        logits = model.run(ps.ids).last_logits()
    finally:
        for hd in handles:
            hd.remove()
    want = logits[:, ps.label_ids].softmax(-1).cpu()
    assert torch.allclose(got.cpu(), want, atol=1e-5)
    plain = model.run(ps.ids).last_logits()[:, ps.label_ids].softmax(-1).cpu()
    assert not torch.allclose(got.cpu(), plain, atol=1e-4)  # the ablation did something


def _by_hand_qkv(model: HookedModel, layer: int, head: int) -> list[torch.utils.hooks.RemovableHandle]:
    """Zero the head's q, k and v projection slices at the last column (needs one kv head per head)."""
    attn = f"{model.arch.layers}.{layer}.{model.arch.attn}"
    d = model.d_head

    def hook(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, -1, head * d:(head + 1) * d] = 0
        return out

    return [model.module(f"{attn}.{p}").register_forward_hook(hook) for p in ("q_proj", "k_proj", "v_proj")]


def test_qkv_variant_equals_zeroing_q_k_v_by_hand() -> None:
    model = toy_model("llama_tied")  # 4 heads, 4 kv heads: each head owns its k/v slices
    assert model.n_kv_heads == model.n_heads
    ps = _prompts(model, "true")
    heads = [(0, 1), (2, 3)]
    handles = [h for layer, head in heads for h in _by_hand_qkv(model, layer, head)]
    try:
        want = model.run(ps.ids).last_logits()
    finally:
        for hd in handles:
            hd.remove()
    full = model.run(ps.ids, [HeadQKVAblate(heads)]).last_logits()
    assert torch.allclose(full, want, atol=1e-5)
    cached = final_label_probs(model, ps, {"qkv": lambda: head_ablation(heads, "qkv")}, progress=False)["qkv"]
    assert torch.allclose(cached.cpu(), want[:, ps.label_ids].softmax(-1).cpu(), atol=1e-5)
    assert not torch.allclose(full, model.run(ps.ids).last_logits(), atol=1e-4)


def test_qkv_ablation_composes_saves_and_loads(tmp_path: Path) -> None:
    model = toy_model("llama")
    ps = _prompts(model, "true")
    iv = HeadQKVAblate([(1, 0), (1, 3), (2, 1)])
    res = model.run(ps.ids, [iv, Cache("attn_pattern.1", positions=-1), Cache("head_z.2", positions=-1)])
    pat = res.cache["attn_pattern.1"][:, :, 0]  # [batch, heads, keys] at each final token
    mask = res.batch.attention_mask.bool()
    for b in range(len(ps)):
        n = int(mask[b].sum())
        row = pat[b, 0][mask[b]]
        assert torch.allclose(row[:-1], torch.full((n - 1,), 1 / n, device=row.device)) and row[-1] == 0
    iv.save(tmp_path / "one")
    assert Intervention.load(tmp_path / "one") == iv
    save_interventions([iv, Cache("resid_post.0")], tmp_path / "many")
    loaded = load_interventions(tmp_path / "many")
    again = model.run(ps.ids, [loaded[0]]).last_logits()
    assert torch.allclose(again, res.logits[torch.arange(len(ps)), res.batch.last_index], atol=1e-6)
    with pytest.raises(InputError, match=r"Head index 9 of head \(0, 9\) is out of range"):
        model.run(ps.ids, [HeadQKVAblate([(0, 9)])])
    for bad in ([(0, "a")], [], 3, [(0, 1, 2)]):
        with pytest.raises(InputError, match=r"HeadQKVAblate takes a non-empty list of \(layer, head\) pairs"):
            HeadQKVAblate(bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="Unknown ablation"):
        head_ablation([(0, 0)], "resample")


def _tiny_study(figures: bool):  # noqa: ANN202
    model = toy_model("llama")
    report = run_study(model, toy_task(), score_task=None, n_prompts=6, n_demos=4, lenses={"logit": LogitLens(model)},
                       top_k=2, n_random=3, batch_size=6, progress=False, figures=figures)
    return model, report


def test_mean_ablation_runs_and_study_report_is_json() -> None:
    model, report = _tiny_study(figures=False)
    data = report.to_dict()
    json.dumps(data, allow_nan=False)
    t = data["tables"]["logit"]
    assert set(t) == {"true", "permuted", "random"}
    assert len(t["true"]["acc"]) == model.n_layers and len(t["true"]["acc"][0]) == 5
    assert set(data["ablation"]["methods"]) == {"zero", "mean", "qkv"}
    assert len(data["ablation"]["methods"]["zero"]["random"]["gap_reductions"]) == 3
    # the unablated final-token accuracy is the last layer's logit-lens accuracy at the last k
    assert data["ablation"]["acc_true"] == pytest.approx(t["true"]["acc"][-1][-1])
    assert data["ablation"]["acc_false"] == pytest.approx(t["permuted"]["acc"][-1][-1])
    assert "critical layer" in report.summary()


def test_summary_says_no_gap_instead_of_nan() -> None:
    """Without a false-demo gap the gap reduction is undefined (NaN): the summary says so in words."""
    import copy
    import dataclasses

    _, report = _tiny_study(figures=False)
    assert report.ablation is not None
    ablation = copy.deepcopy(report.ablation)
    ablation["acc_false"], ablation["gap"] = ablation["acc_true"], 0.0
    nan = float("nan")
    for r in ablation["methods"].values():
        r["top"]["gap_reduction"] = nan
        r["random"].update(gap_reduction_mean=nan, gap_reduction_std=nan, gap_reductions=[nan] * 3)
    text = dataclasses.replace(report, ablation=ablation).summary()
    assert "nan" not in text.lower() and text.count("gap reduction n/a: no gap") == 3, text


@pytest.mark.slow
def test_study_saves_report_and_figures(tmp_path: Path) -> None:
    _, report = _tiny_study(figures=True)
    out = report.save(tmp_path / "rep")
    assert json.loads((out / "report.json").read_text())["config"]["n_demos"] == 4
    assert {p.name for p in out.iterdir()} >= {"report.json", "accuracy_layers.png", "head_scores.png",
                                               "ablation.png", "accuracy_demos.png"}


@pytest.mark.slow
def test_saved_report_loads_back_with_the_same_numbers_and_figures(tmp_path: Path) -> None:
    from lmscope.probes.overthinking.study import OverthinkingReport

    _, report = _tiny_study(figures=True)
    back = OverthinkingReport.load(report.save(tmp_path / "rep"))
    assert back.to_dict() == report.to_dict()
    assert set(back.figures) == set(report.figures) and back.summary() == report.summary()
    with pytest.raises(InputError, match="No overthinking report at"):
        OverthinkingReport.load(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text('{"config": {}}')
    with pytest.raises(InputError, match="is not an overthinking report"):
        OverthinkingReport.load(tmp_path / "bad")


def _mixed_configs(model: HookedModel) -> dict:
    from lmscope.probes.overthinking.heads import random_head_sets

    draws = random_head_sets(model.n_layers, model.n_heads, 3, 3, seed=1)
    configs: dict = {"none": ((), "zero")}
    for m in ("zero", "mean", "qkv"):
        configs[f"{m}/top"] = ([(1, 2), (2, 0), (-1, 1)], m)
        for i, d in enumerate(draws):
            configs[f"{m}/random{i}"] = (d, m)
    return configs


@pytest.mark.parametrize("arch", ["llama", "llama_tied", "gpt2", "gpt_neox", "qwen3", "gemma2", "gemma3_text"])
def test_batched_configs_equal_the_per_config_loop(arch: str) -> None:
    """Rows = prompts x configurations, one final-token forward per group: the same numbers as one forward per
    config, including ``mean`` (each configuration's mean over its own rows), padded prompts of different
    lengths, groups that start above layer 0 (sorted by their first ablated layer) and the label-only
    unembedding (Gemma 2's final softcapping acts per logit). The Gemma windows are widened past the prompts,
    as on the real models (the loop's cache rollback needs that)."""
    model = toy_model(arch)
    if arch.startswith("gemma"):
        model.hf_model.config.sliding_window = 64
    ps = _prompts(model, "permuted", n=5)
    configs = _mixed_configs(model)
    loop = final_label_probs(model, ps, configs, batch_size=2, progress=False, batch_configs=False)
    for chunk in (32, 4):  # all at once, and groups of configurations that split the methods
        batched = final_label_probs(model, ps, configs, batch_size=2, progress=False, config_chunk=chunk)
        assert batched.keys() == loop.keys()
        for name in loop:
            assert torch.allclose(batched[name], loop[name], atol=1e-6, rtol=0), name
    # the configurations differ from each other (a row ablating another config's heads would show here)
    assert not torch.allclose(loop["mean/top"], loop["zero/top"], atol=1e-4)
    assert not torch.allclose(loop["mean/top"], loop["none"], atol=1e-4)
    assert not torch.allclose(loop["qkv/top"], loop["none"], atol=1e-4)


def test_batched_configs_run_as_rows_over_every_layer_where_columns_are_not_exact(monkeypatch) -> None:
    """Configurations along the query axis (shared prefix cache) and start layers above 0 where partial
    forwards are exact; otherwise rows over every layer. Both equal the loop."""
    import lmscope.probes.overthinking.final_token as ablation

    model = toy_model("llama")
    ps = _prompts(model, "permuted", n=3)
    configs = _mixed_configs(model)
    loop = final_label_probs(model, ps, configs, batch_size=3, progress=False, batch_configs=False)
    starts: list[int] = []
    layouts: list[int] = []
    real_start, real_mask = ablation.partial_model, ablation._column_mask

    def spy(m, start=0, hidden=None, **kwargs):  # type: ignore[no-untyped-def]
        if start:
            starts.append(start)
        return real_start(m, start, hidden, **kwargs)

    def mask_spy(mask, n_conf, dtype):  # type: ignore[no-untyped-def]
        layouts.append(n_conf)
        return real_mask(mask, n_conf, dtype)

    monkeypatch.setattr(ablation, "partial_model", spy)
    monkeypatch.setattr(ablation, "_column_mask", mask_spy)
    columns = final_label_probs(model, ps, configs, batch_size=3, progress=False, config_chunk=4)
    assert starts and max(starts) > 0  # the top heads start at layer 1
    assert layouts and max(layouts) == 4  # every group ran in the column layout
    starts.clear()
    layouts.clear()
    monkeypatch.setattr(ablation, "partial_forward_unsupported", lambda m, length=None: "a reason")
    batched = final_label_probs(model, ps, configs, batch_size=3, progress=False, config_chunk=4)
    assert not starts and not layouts
    for name in loop:
        assert torch.allclose(columns[name], loop[name], atol=1e-6, rtol=0), name
    for name in loop:
        assert torch.allclose(batched[name], loop[name], atol=1e-6, rtol=0), name


def test_label_head_runs_privately_and_equals_the_label_columns() -> None:
    """The label-only unembedding runs through a private shell: the model's own head and plain forwards are
    untouched while it is in use."""
    from lmscope.interventions.partial import partial_model
    from lmscope.probes.overthinking.final_token import label_head

    model = toy_model("gpt2")
    ids = torch.tensor([3, 7, 5])
    original = model.unembed
    x = [[1, 4, 6, 2]]
    full = model.run(x).logits[0, -1]
    head = label_head(model, ids)
    assert head is not None
    with partial_model(model, unembed=head) as forward:
        small = forward(input_ids=torch.tensor(x)).logits[0, -1]
        assert model.unembed is original
        assert torch.equal(model.run(x).logits[0, -1], full)
    torch.testing.assert_close(small, full[ids], rtol=1e-5, atol=1e-6)


def test_batched_mean_is_per_configuration_not_over_the_whole_batch() -> None:
    """A ``mean`` config next to a ``zero`` config: averaging over all rows would mix the zeroed rows in."""
    model = toy_model("llama")
    ps = _prompts(model, "true", n=4)
    configs = {"zero": ([(0, 1)], "zero"), "mean": ([(0, 1), (2, 2)], "mean")}
    loop = final_label_probs(model, ps, configs, batch_size=4, progress=False, batch_configs=False)
    batched = final_label_probs(model, ps, configs, batch_size=4, progress=False)
    assert torch.allclose(batched["mean"], loop["mean"], atol=1e-6, rtol=0)
    alone = final_label_probs(model, ps, {"mean": configs["mean"]}, batch_size=4, progress=False)
    assert torch.allclose(alone["mean"], loop["mean"], atol=1e-6, rtol=0)


def test_batched_configs_bad_input() -> None:
    from lmscope.probes.overthinking.ablation import RowHeadAblation

    model = toy_model("llama")
    ps = _prompts(model, "true", n=2)
    with pytest.raises(InputError, match="methods: zero, mean, qkv"):
        final_label_probs(model, ps, {"x": ([(0, 0)], "gauss")}, progress=False)
    with pytest.raises(InputError, match=r"Head index 99 of head \(0, 99\) is out of range"):
        final_label_probs(model, ps, {"x": ([(0, 99)], "zero")}, progress=False)
    with pytest.raises(InputError, match="config_chunk"):
        final_label_probs(model, ps, {"x": ([(0, 0)], "zero")}, progress=False, config_chunk=0)
    with pytest.raises(InputError, match="no configuration names a head"):
        RowHeadAblation([((), "zero")])
    # callables still work (they take the loop) and mix with specs
    got = final_label_probs(model, ps, {"f": lambda: head_ablation([(0, 0)], "zero"), "s": ([(0, 0)], "zero")},
                            progress=False)
    assert torch.equal(got["f"], got["s"])


def test_qkv_ablation_merges_a_layer_named_twice() -> None:
    """``(-1, h)`` and ``(n_layers - 1, h')`` are the same layer: both heads are ablated (was: the last won)."""
    model = toy_model("llama")
    ps = _prompts(model, "true", n=2)
    last = model.n_layers - 1
    both = model.run(ps.ids, [HeadQKVAblate([(last, 0), (-1, 1)])]).last_logits()
    want = model.run(ps.ids, [HeadQKVAblate([(last, 0), (last, 1)])]).last_logits()
    assert torch.equal(both, want)
    last_won = model.run(ps.ids, [HeadQKVAblate([(last, 1)])]).last_logits()
    assert not torch.allclose(both, last_won, atol=1e-4)  # head 0 is ablated too


def test_row_head_ablation_on_a_full_batch() -> None:
    """Rows = prompts x configs on full prompts (no cache): row (b, c) equals prompt b under config c alone."""
    from lmscope.probes.overthinking.ablation import RowHeadAblation

    model = toy_model("llama")
    ps = _prompts(model, "true", n=3)
    configs = [([(0, 1), (2, 3)], "zero"), ([(1, 2)], "qkv"), ((), "zero")]
    rows = [ps.ids[b] for b in range(len(ps)) for _ in configs]
    iv = RowHeadAblation(configs)
    got = model.run(rows, [iv]).last_logits().view(len(ps), len(configs), -1)
    for c, (heads, method) in enumerate(configs):
        want = model.run(ps.ids, head_ablation(heads, method) if heads else []).last_logits()
        assert torch.allclose(got[:, c], want, atol=1e-5), c


def test_batched_ablations_are_internal_neither_saved_nor_loaded(tmp_path: Path) -> None:
    """The runner's row/column layouts are internal helpers: not in the loading registry, and saving one is
    refused (their configs mean nothing outside the runner's forward); the public HeadQKVAblate still saves."""
    from lmscope.interventions.artifacts import save_artifact
    from lmscope.interventions.base import _REGISTRY
    from lmscope.probes.overthinking.ablation import ColumnHeadAblation, RowHeadAblation

    configs = [([(0, 1)], "zero"), ([(1, 2)], "qkv")]
    helpers = [RowHeadAblation(configs), ColumnHeadAblation(configs, torch.ones(2, 3))]
    assert "HeadQKVAblate" in _REGISTRY
    for iv in helpers:
        name = type(iv).__name__
        assert iv.internal and name not in _REGISTRY
        with pytest.raises(InputError, match=f"{name} is an internal helper intervention"):
            iv.save(tmp_path / name)
        with pytest.raises(InputError, match=f"{name} is an internal helper intervention"):
            save_interventions([HeadQKVAblate([(0, 1)]), iv], tmp_path / f"{name}-list")
        assert not (tmp_path / name).exists() and not (tmp_path / f"{name}-list").exists()
        save_artifact(tmp_path / f"{name}-forged", {"type": name, "config": iv.config()}, {},
                      config_name="intervention.json")
        with pytest.raises(ArtifactError, match=f"Unknown intervention type '{name}'"):
            Intervention.load(tmp_path / f"{name}-forged")


def test_negative_head_indices_count_from_the_end() -> None:
    """Heads are checked by the core (negative indices from the end, as in ``Ablate``)."""
    model = toy_model("llama")
    ps = _prompts(model, "true", n=2)
    n = model.n_heads
    for method in METHODS:
        configs = {"neg": ([(1, -1)], method), "pos": ([(1, n - 1)], method)}
        got = final_label_probs(model, ps, configs, batch_size=2, progress=False)
        if TEST_DEVICE == "cpu":
            assert torch.equal(got["neg"], got["pos"]), method
        else:  # the lazy backend differs by an ulp even between two runs of one configuration
            assert_close(got["neg"], got["pos"], n_ops=1, msg=method)
