"""Partial forwards (``interventions/partial.py``): starting at layer L after a KV prefix equals the full run."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_tiny, random_ids

from lmscope.interventions import Cache, HookedModel, InputError, Steer
from lmscope.interventions.partial import (
    forward_with_kv,
    kv_prefix,
    partial_forward_unsupported,
    partial_model,
    run_from_layer,
)


def _ids(n: int = 7, seed: int = 0) -> torch.Tensor:
    return random_ids((1, n), seed)


def test_run_from_every_layer_after_every_prefix_equals_full_forward(tiny) -> None:
    _skip_unsupported(tiny)
    ids = _ids()
    cache = Cache("resid_pre.*")
    full, kv = forward_with_kv(tiny, ids, [cache])
    for layer in range(tiny.n_layers):
        for p in (0, 4):
            hidden = cache[f"resid_pre.{layer}"][:, p:].expand(3, -1, -1)
            out = run_from_layer(tiny, hidden if layer else None, layer, ids[:, p:].expand(3, -1),
                                 past=kv_prefix(tiny, kv, p, 3), last_only=False)
            torch.testing.assert_close(out, full[:, p:].expand(3, -1, -1), atol=1e-5, rtol=1e-5)


def test_interventions_act_on_the_layers_that_run_with_prefix_positions(tiny) -> None:
    _skip_unsupported(tiny)
    ids = _ids(6, seed=1)
    vec = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(1))
    steer = Steer("resid_post.2", vec, positions=[4])  # token 4 = column 1 of the suffix after a 3-token prefix
    full = tiny.run(ids, [steer]).logits
    cache = Cache("resid_pre.1")
    _, kv = forward_with_kv(tiny, ids, [cache])
    out = run_from_layer(tiny, cache["resid_pre.1"][:, 3:], 1, ids[:, 3:], past=kv_prefix(tiny, kv, 3, 1),
                         interventions=[steer], last_only=False)
    torch.testing.assert_close(out, full[:, 3:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full, tiny.run(ids).logits)  # the steer did something


def test_hooks_are_removed_after_an_error(llama_tiny) -> None:
    model = llama_tiny
    reference = model.run(_ids(3)).logits
    layers = model.hf_model.model.layers
    n_hooks = sum(len(m._forward_pre_hooks) for m in layers)
    bad = torch.zeros(1, 2, model.d_model)  # wrong length for 3 new tokens
    with pytest.raises(InputError, match="hidden has shape"):
        run_from_layer(model, bad, 1, _ids(3))
    assert model.hf_model.model.layers is layers
    assert sum(len(m._forward_pre_hooks) for m in layers) == n_hooks
    assert torch.equal(model.run(_ids(3)).logits, reference)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_partial_model_changes_nothing_another_thread_sees(arch: str, one_thread: None) -> None:
    """Inside the block the shared model is untouched: its layer list and config are the same objects, and a
    forward run by another thread equals the reference bit for bit (the feed hook acts in this context only)."""
    import threading

    model = HookedModel(build_tiny(arch))
    ids = _ids(5, seed=2)
    reference = model.run(ids).logits
    decoder = model.hf_model.model
    layers, config, types = decoder.layers, model.hf_model.config, getattr(model.hf_model.config, "layer_types", None)
    cache = Cache("resid_pre.2")
    model.run(ids, [cache])
    got: dict[str, torch.Tensor] = {}
    head = torch.nn.Linear(model.d_model, 3).to(model.hf_model.device)
    with partial_model(model, 2, cache["resid_pre.2"], unembed=head) as forward:
        assert forward is not model.hf_model
        assert decoder.layers is layers and len(layers) == model.n_layers and model.hf_model.config is config
        assert getattr(config, "layer_types", None) == types
        thread = threading.Thread(target=lambda: got.update(plain=model.run(ids).logits))
        thread.start()
        thread.join()
        assert forward(input_ids=ids, use_cache=False).logits.shape[-1] == 3  # the private head
    assert torch.equal(got["plain"], reference)


def test_bad_start_and_prefix_are_refused(llama_tiny) -> None:
    with pytest.raises(InputError, match="outside 0..2"):
        with partial_model(llama_tiny, 3, torch.zeros(1, 1, 32)):
            pass
    with pytest.raises(InputError, match="needs the residual stream"):
        with partial_model(llama_tiny, 1, None):
            pass
    _, kv = forward_with_kv(llama_tiny, _ids(3))
    with pytest.raises(InputError, match="holds 3 tokens"):
        kv_prefix(llama_tiny, kv, 4, 1)
    assert kv_prefix(llama_tiny, kv, 0, 2) is None


def _skip_unsupported(model) -> None:
    from lmscope.interventions.partial import partial_forward_unsupported

    reason = partial_forward_unsupported(model)
    if reason is not None:
        pytest.skip(f"partial forwards are refused with {reason} (tested below)")


def test_unsupported_architectures_are_refused(tiny) -> None:
    """Sliding windows and ALiBi: partial forwards refuse rather than return inexact logits."""
    from lmscope.interventions.partial import forward_with_kv, partial_forward_unsupported, run_from_layer

    reason = partial_forward_unsupported(tiny)
    if reason is None:
        pytest.skip("partial forwards are exact on this architecture (tested above)")
    ids = torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(InputError, match="not exact"):
        forward_with_kv(tiny, ids)
    with pytest.raises(InputError, match="not exact"):
        run_from_layer(tiny, None, 1, ids)


@pytest.mark.parametrize("arch", ["mistral_sliding", "gemma2", "gemma3_text", "mixtral"])
def test_sequences_shorter_than_a_sliding_window_run_partially_and_exactly(arch: str, one_thread: None) -> None:
    """A window longer than every sequence masks nothing: prefix + start-layer runs equal the full forward."""
    model = HookedModel(build_tiny(arch))
    window = int(model.hf_model.config.sliding_window)
    assert "sliding-window" in str(partial_forward_unsupported(model))  # unknown length: refused
    assert "sliding-window" in str(partial_forward_unsupported(model, window))  # the window could mask a key
    assert partial_forward_unsupported(model, window - 1) is None
    ids = _ids(window - 1, seed=3)
    cache = Cache("resid_pre.*")
    full, kv = forward_with_kv(model, ids, [cache])
    for layer in range(model.n_layers):
        for p in range(window - 1):
            hidden = cache[f"resid_pre.{layer}"][:, p:].expand(2, -1, -1)
            out = run_from_layer(model, hidden if layer else None, layer, ids[:, p:].expand(2, -1),
                                 past=kv_prefix(model, kv, p, 2), last_only=False)
            torch.testing.assert_close(out, full[:, p:].expand(2, -1, -1), atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="window 4, not longer than the sequences of 4 tokens"):
        forward_with_kv(model, _ids(window))
