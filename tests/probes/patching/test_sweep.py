"""The exact patching sweep equals the one-forward-per-patch loop built on ``Patch``, on every architecture."""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny_models import WINDOW, build_tiny, random_ids
from toys import gap_metric, patching_pair

from lmscope.interventions import HookedModel, InputError, SiteError
from lmscope.probes.patching import head_sweep, patching_sweep, resid_pre_sweep

metric, _pair = gap_metric, patching_pair


def _assert_equal_maps(model, clean, corrupt, sites, positions, **kw) -> None:
    fast = patching_sweep(model, clean, corrupt, sites, positions, metric, layer_block=2, position_block=2,
                          batch_size=5, **kw)
    slow = patching_sweep(model, clean, corrupt, sites, positions, metric, method="loop", **kw)
    assert fast.row_labels == slow.row_labels and fast.col_labels == slow.col_labels
    torch.testing.assert_close(fast.values, slow.values, atol=2e-5, rtol=1e-5)
    assert fast.base_metric == pytest.approx(slow.base_metric, abs=1e-5)
    assert fast.effect().abs().max() > 1e-3  # the patches really change the metric


def test_exact_sweep_equals_loop_on_every_architecture(tiny) -> None:
    clean, corrupt = _pair()
    sites = ["embed", "resid_pre.*", "attn_out.1", "mlp_out.2", "resid_post.0"]
    if "resid_mid" in tiny.available_kinds:
        sites.append("resid_mid.1")
    _assert_equal_maps(tiny, clean, corrupt, sites, [0, 2, 3, 5])


@pytest.mark.parametrize("arch", ["mistral_sliding", "gemma3_text"])
def test_prompts_shorter_than_the_sliding_window_keep_the_fast_exact_sweep(arch: str, one_thread: None) -> None:
    model = HookedModel(build_tiny(arch))
    clean = random_ids((WINDOW - 1,), 4)
    corrupt = clean.clone()
    corrupt[1] = (corrupt[1] + 5) % 97
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        fast = patching_sweep(model, clean, corrupt, ["resid_pre.*", "attn_out.1"], "all", metric, layer_block=2)
    assert fast.method == "exact"
    _assert_equal_maps(model, clean, corrupt, ["resid_pre.*", "attn_out.1", "mlp_out.2"], "all")
    long_clean, long_corrupt = _pair(WINDOW + 2, seed=4)
    with pytest.warns(UserWarning, match="sliding-window attention"):
        slow = patching_sweep(model, long_clean, long_corrupt, "resid_pre.*", [0, -1], metric)
    assert slow.method == "loop"


def test_exact_head_sweep_equals_loop_per_head(tiny) -> None:
    clean, corrupt = _pair(5, seed=2)
    _assert_equal_maps(tiny, clean, corrupt, ["head_z.0", "head_z.2"], "all", heads=True)
    _assert_equal_maps(tiny, clean, corrupt, "head_z.1", [1, -1], heads=True)


def test_noising_direction_equals_loop(llama_tiny) -> None:
    clean, corrupt = _pair()
    _assert_equal_maps(llama_tiny, clean, corrupt, "resid_pre.*", [0, 3, 5], direction="noise")
    noise = resid_pre_sweep(llama_tiny, clean, corrupt, metric, layers=[0], positions="all", direction="noise")
    denoise = resid_pre_sweep(llama_tiny, clean, corrupt, metric, layers=[0], positions="all")
    assert noise.base_metric == pytest.approx(denoise.source_metric)


def test_patching_a_run_with_itself_changes_nothing(llama_tiny) -> None:
    clean, _ = _pair()
    result = patching_sweep(llama_tiny, clean, clean, ["resid_pre.*", "mlp_out.1"], None, metric)
    torch.testing.assert_close(result.values, torch.full_like(result.values, result.base_metric), atol=1e-5,
                               rtol=0)


def test_patching_every_position_of_a_residual_restores_the_source_run(tiny) -> None:
    clean, corrupt = _pair()
    result = resid_pre_sweep(tiny, clean, corrupt, metric, positions="all")
    torch.testing.assert_close(result.values, torch.full_like(result.values, result.source_metric), atol=1e-5,
                               rtol=0)
    assert abs(result.source_metric - result.base_metric) > 1e-3


def test_labels_and_ready_made_sweeps(llama_tiny) -> None:
    clean, corrupt = _pair(4)
    r = head_sweep(llama_tiny, clean, corrupt, metric, layers=[-1])
    assert r.row_labels == [f"head_z.2:h{h}" for h in range(4)] and r.col_labels == ["all"]
    r = resid_pre_sweep(llama_tiny, clean, corrupt, metric, layers=[0, 2], positions=[-1, 0])
    assert r.row_labels == ["resid_pre.0", "resid_pre.2"] and [c.split(":")[0] for c in r.col_labels] == ["3", "0"]


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(corrupt=[1, 2, 3]), InputError, "same token length"),
    (dict(clean=[[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]]), InputError, "clean has 2 prompt.* corrupt has 1"),
    (dict(clean=[[1, 2, 3, 4, 5, 6], [1, 2, 3]], corrupt=[[1, 2, 3, 4, 5, 7], [1, 2]]), InputError,
     "pair 1: clean has 3 tokens"),
    (dict(clean=[[1, 2, 3, 4, 5, 6], [1, 2, 3]], corrupt=[[1, 2, 3, 4, 5, 7], [1, 2, 4]]), InputError,
     "2 different token lengths"),
    (dict(sites="logits"), InputError, "Cannot patch logits: patching the logits replaces what the metric reads.*"
                                       "Patchable kinds: embed, resid_pre, ln1, q, k, v"),
    (dict(sites="resid_pre.7"), SiteError, "out of range"),
    (dict(heads=True), InputError, r"heads= patches single heads of per-head sites \(q, k, v, rot_q, rot_k, "
                                   r"attn_scores, attn_pattern, head_z, head_out\), but no such site"),
    (dict(neurons=True), InputError, "neurons= patches single neurons of mlp_pre or mlp_post sites, but no such"),
    (dict(sites="mlp_post.1", neurons=[48]), InputError, r"Neuron 48 is out of range for mlp_post.1: it has 48 "
                                                         r"neurons \(valid 0..47"),
    (dict(sites="v.1", heads=[2]), InputError, r"Head 2 is out of range for v.1: it has 2 KV heads"),
    (dict(sites="mlp_post.1", neurons=[]), InputError, "neurons must be True, False or a non-empty list"),
    (dict(positions=[6]), InputError, "outside the prompt's 6 tokens"),
    (dict(positions=3), InputError, "list of ints"),
    (dict(method="fast"), InputError, "method must be one of"),
    (dict(direction="sideways"), InputError, "direction must be one of"),
    (dict(metric=None), InputError, "needs a metric"),
    (dict(batch_size=0), InputError, "batch_size must be a positive int"),
])
def test_bad_input_is_refused_with_a_specific_error(llama_tiny, kwargs, error, message) -> None:
    clean, corrupt = _pair()
    args = dict(clean=clean, corrupt=corrupt, sites="resid_pre.*", positions=None, metric=metric)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        patching_sweep(llama_tiny, **args)


def _dataset(lengths: tuple[int, ...] = (6, 4, 6, 5)) -> tuple[list[list[int]], list[list[int]]]:
    pairs = [_pair(n, seed=10 + i) for i, n in enumerate(lengths)]
    return [c.tolist() for c, _ in pairs], [k.tolist() for _, k in pairs]


@pytest.mark.parametrize("method", ["exact", "loop", "attribution"])
def test_dataset_sweep_per_pair_equals_single_pair_sweeps(llama_tiny, method) -> None:
    """Pairs of different lengths (two share one): each pair's map equals its own single-pair sweep; the mean and
    standard error are taken over those maps."""
    clean, corrupt = _dataset()
    sites, positions = ["resid_pre.*", "head_z.1"], [0, -1, 2]
    kw = dict(method=method, layer_block=2, position_block=2, batch_size=7)
    data = patching_sweep(llama_tiny, clean, corrupt, sites, positions, metric, **kw)
    assert data.per_pair is not None and data.per_pair.shape == (4, *data.shape)
    assert data.col_labels == ["0", "-1", "2"]
    for i, (c, k) in enumerate(zip(clean, corrupt)):
        single = patching_sweep(llama_tiny, c, k, sites, positions, metric, **kw)
        assert single.per_pair is None and single.stderr is None
        torch.testing.assert_close(data.per_pair[i], single.values, atol=2e-5, rtol=1e-5)
        assert data.pair_base_metrics[i] == pytest.approx(single.base_metric, abs=1e-5)
        assert data.pair_source_metrics[i] == pytest.approx(single.source_metric, abs=1e-5)
    torch.testing.assert_close(data.values, data.per_pair.mean(0))
    torch.testing.assert_close(data.stderr_raw, data.per_pair.std(0) / 2.0)
    effects = data.per_pair - torch.tensor(data.pair_base_metrics)[:, None, None]  # paired: each pair's own base
    torch.testing.assert_close(data.stderr, effects.std(0) / 2.0)
    assert data.base_metric == pytest.approx(sum(data.pair_base_metrics) / 4)


def test_batched_dataset_sweep_equals_the_patch_loop(tiny) -> None:
    clean, corrupt = _dataset((5, 5, 4))
    for sites, positions, heads in ((["resid_pre.*", "mlp_out.1"], [1, -1], False), ("head_z.*", "all", True)):
        fast = patching_sweep(tiny, clean, corrupt, sites, positions, metric, heads=heads, layer_block=2,
                              position_block=2, batch_size=8)
        small = patching_sweep(tiny, clean, corrupt, sites, positions, metric, heads=heads, batch_size=1)
        torch.testing.assert_close(small.per_pair, fast.per_pair, atol=2e-5, rtol=1e-5)  # pairs split too
        slow = patching_sweep(tiny, clean, corrupt, sites, positions, metric, heads=heads, method="loop")
        torch.testing.assert_close(fast.per_pair, slow.per_pair, atol=2e-5, rtol=1e-5)
        for name in ("stderr", "stderr_raw", "stderr_normalized"):
            torch.testing.assert_close(getattr(fast, name), getattr(slow, name), atol=2e-5, rtol=1e-4)
        assert fast.per_pair.std(0).max() > 1e-4  # the pairs really differ


def test_head_sweep_over_pairs_is_one_batched_pass_per_block(llama_tiny, monkeypatch) -> None:
    """N pairs of one length: as many partial forwards as one pair (each batch holds cells x pairs)."""
    import lmscope.interventions.partial as partial

    calls: list[int] = []
    original = partial.run_from_layer

    def counting(model, hidden, start, input_ids, **kw):
        calls.append(input_ids.shape[0])
        return original(model, hidden, start, input_ids, **kw)

    monkeypatch.setattr(partial, "run_from_layer", counting)
    clean, corrupt = _dataset((5, 5, 5, 5))
    head_sweep(llama_tiny, clean[0], corrupt[0], metric, layer_block=1)
    one = list(calls)
    calls.clear()
    data = head_sweep(llama_tiny, clean, corrupt, metric, layer_block=1)
    assert len(calls) == len(one) == llama_tiny.n_layers and calls == [4 * n for n in one]
    assert data.by_head().shape == (llama_tiny.n_layers, llama_tiny.n_heads)
    torch.testing.assert_close(data.by_head("stderr"), data.stderr.reshape(llama_tiny.n_layers, -1))


def test_dataset_sweep_with_equal_lengths_sweeps_every_position(llama_tiny) -> None:
    clean, corrupt = _dataset((5, 5))
    data = resid_pre_sweep(llama_tiny, clean, corrupt, metric, layers=[0, 1])
    assert data.col_labels == ["0", "1", "2", "3", "4"] and data.per_pair.shape == (2, 2, 5)


def test_one_metric_per_pair(llama_tiny) -> None:
    """A list of metrics scores pair i with metric i (e.g. each pair's own answer tokens), batched or looped."""
    clean, corrupt = _dataset((5, 4, 5))
    metrics = [lambda x, a=a: x[:, a] - x[:, a + 1] for a in (3, 10, 20)]
    for method in ("exact", "loop", "attribution"):
        data = patching_sweep(llama_tiny, clean, corrupt, "resid_pre.*", [0, -1], metrics, method=method,
                              batch_size=4)
        for i in range(3):
            single = patching_sweep(llama_tiny, clean[i], corrupt[i], "resid_pre.*", [0, -1], metrics[i],
                                    method=method)
            torch.testing.assert_close(data.per_pair[i], single.values, atol=2e-5, rtol=1e-5)
            assert data.pair_base_metrics[i] == pytest.approx(single.base_metric, abs=1e-5)
    with pytest.raises(InputError, match="list of 2 functions but there are 3 pairs"):
        patching_sweep(llama_tiny, clean, corrupt, "resid_pre.*", [0], metrics[:2])
