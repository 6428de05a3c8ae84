"""Fixtures for the binding tests: a fake tokenizer, the toy task (``tests/toys.py``), a tiny model using both,
``same_results`` (the one comparison of two scoring paths' results) and ``keys_by_hand`` (the key-only
position shift's independent reference)."""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch
from toys import FakeTokenizer, binding_task

from lmscope.interventions.tolerance import assert_close


@pytest.fixture
def fake_tok() -> FakeTokenizer:
    return FakeTokenizer()


@pytest.fixture
def toy_task():  # type: ignore[no-untyped-def]
    return binding_task()


@pytest.fixture
def keys_by_hand(monkeypatch: pytest.MonkeyPatch) -> Callable[..., torch.Tensor]:
    """``run(model, ids, shifts)``: the logits of a Llama-style model whose keys sit at position + shift (its own
    ``apply_rotary_pos_emb``, the keys' cos/sin taken at the shifted positions; queries keep theirs)."""
    import transformers.models.llama.modeling_llama as ml

    original = ml.apply_rotary_pos_emb

    def run(model: Any, ids: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
        rope = model.hf_model.model.rotary_emb
        pos = torch.arange(ids.shape[1])[None].expand_as(ids)

        def patched(q, k, cos, sin, *args, **kwargs):  # type: ignore[no-untyped-def]
            q_out, _ = original(q, k, cos, sin, *args, **kwargs)
            cos_k, sin_k = rope(k, (pos + shifts).to(k.device))  # the reference on the model's device
            _, k_out = original(q, k, cos_k, sin_k, *args, **kwargs)
            return q_out, k_out

        monkeypatch.setattr(ml, "apply_rotary_pos_emb", patched)
        try:
            return model.run(ids).logits
        finally:
            monkeypatch.setattr(ml, "apply_rotary_pos_emb", original)
    return run


@pytest.fixture
def toy_model(llama_tiny, fake_tok):  # type: ignore[no-untyped-def]
    from lmscope.interventions import HookedModel

    return HookedModel(llama_tiny.hf_model, fake_tok)


def _walk(actual: Any, expected: Any, path: str, floats: list[tuple[float, float, str]], dtype: torch.dtype) -> None:
    """Compare structure and every non-float exactly; tensors norm-wise; collect the float pairs."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), path
        assert set(actual) == set(expected), f"{path}: keys {sorted(map(repr, actual))} vs " \
                                             f"{sorted(map(repr, expected))}"
        for k in expected:
            _walk(actual[k], expected[k], f"{path}[{k!r}]", floats, dtype)
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), f"{path}: lengths differ"
        for i, (a, b) in enumerate(zip(actual, expected)):
            _walk(a, b, f"{path}[{i}]", floats, dtype)
    elif isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and actual.shape == expected.shape, f"{path}: shapes differ"
        assert_close(actual, expected, dtype, msg=path)
    elif isinstance(expected, float):
        assert isinstance(actual, float), f"{path}: {actual!r} is not a float"
        assert math.isnan(actual) == math.isnan(expected), f"{path}: {actual} vs {expected}"
        if not math.isnan(expected):
            floats.append((actual, expected, path))
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def assert_same_results(actual: Any, expected: Any, dtype: torch.dtype = torch.float32) -> None:
    """``actual`` has every key, length and non-float value of ``expected``, and every float and tensor equals
    it up to :func:`lmscope.interventions.tolerance.tolerance` of ``dtype`` (the floats of one result compared
    together, norm-wise: accuracies, which are multiples of 1/n, and log-probs side by side)."""
    floats: list[tuple[float, float, str]] = []
    _walk(actual, expected, "result", floats, dtype)
    if floats:
        got = torch.tensor([a for a, _, _ in floats], dtype=torch.float64)
        want = torch.tensor([b for _, b, _ in floats], dtype=torch.float64)
        worst = int((got - want).abs().argmax())
        assert_close(got, want, dtype, msg=f"floats (worst at {floats[worst][2]})")


@pytest.fixture
def same_results() -> Callable[..., None]:
    """:func:`assert_same_results` (kv vs full results: every key, every value)."""
    return assert_same_results
