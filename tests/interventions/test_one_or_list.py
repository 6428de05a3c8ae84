"""Every entry point that takes interventions takes one or a list alike (issue 21).

``model.run(prompt, Steer(...))`` worked but ``model.generate(..., interventions=Steer(...))`` raised a raw
``TypeError: 'Steer' object is not iterable``. All of them now go through ``as_interventions``: one object,
a list, a nested list (``[sv.to_steer(), Cache(...)]``) or None give the same result, and anything else is an
``InputError`` that names what was passed.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tiny_models import random_ids

from lmscope.interventions import Cache, InputError, Steer, as_interventions, load_interventions, save_interventions
from lmscope.interventions.partial import forward_with_kv, kv_prefix, run_from_layer
from lmscope.probes.binding.runs import candidate_logprobs
from lmscope.probes.steering.evals import run_eval


def _steer(model: Any) -> Steer:
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    return Steer("resid_pre.1", v, scale=3.0, positions="all")


def test_as_interventions_forms() -> None:
    a, b = Cache("resid_post.0"), Cache("resid_post.1")
    assert as_interventions(a) == [a]
    assert as_interventions([a, b]) == [a, b] and as_interventions((a, b)) == [a, b]
    assert as_interventions([[a], (b,)]) == [a, b]
    assert as_interventions(iter([a, b])) == [a, b]
    assert as_interventions(None) == [] and as_interventions(()) == []
    with pytest.raises(InputError, match="got str"):
        as_interventions("resid_post.0")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="Item 1 of the interventions is a int"):
        as_interventions([a, 3])
    with pytest.raises(InputError, match="got Tensor"):
        as_interventions(torch.zeros(3))  # type: ignore[arg-type]


def test_run_takes_one_or_a_list(llama_tiny: Any) -> None:
    ids = random_ids((2, 6), seed=1)
    s = _steer(llama_tiny)
    plain = llama_tiny.run(ids).logits
    one = llama_tiny.run(ids, s).logits
    assert not torch.allclose(one, plain)
    torch.testing.assert_close(llama_tiny.run(ids, [s]).logits, one, rtol=0, atol=0)
    torch.testing.assert_close(llama_tiny.run(ids, [[s]]).logits, one, rtol=0, atol=0)
    torch.testing.assert_close(llama_tiny.run(ids, None).logits, plain, rtol=0, atol=0)
    with pytest.raises(InputError, match="Item 0 of the interventions is a str"):
        llama_tiny.run(ids, ["resid_pre.1"])


def test_generate_takes_one_or_a_list(llama_tiny: Any) -> None:
    ids = random_ids((2, 5), seed=2)
    s = _steer(llama_tiny)
    one = llama_tiny.generate(ids, 4, interventions=s).tokens
    assert not torch.equal(one, llama_tiny.generate(ids, 4).tokens)  # the one Steer was applied, not dropped
    assert torch.equal(llama_tiny.generate(ids, 4, interventions=[s]).tokens, one)
    assert torch.equal(llama_tiny.generate(ids, 4, interventions=(s,)).tokens, one)
    with llama_tiny.apply(s):
        assert torch.equal(llama_tiny.generate(ids, 4).tokens, one)
    with pytest.raises(InputError, match="got dict"):
        llama_tiny.generate(ids, 4, interventions={"site": "resid_pre.1"})


def test_apply_takes_one_lists_and_nested_lists(llama_tiny: Any) -> None:
    ids = random_ids((1, 5), seed=3)
    s, c = _steer(llama_tiny), Cache("resid_post.1")
    with llama_tiny.apply(s, c) as session:
        llama_tiny.run(ids)
    ref = session.cache["resid_post.1"]
    assert not torch.equal(ref, llama_tiny.run(ids, [Cache("resid_post.1")]).cache["resid_post.1"])  # steered
    for args in ([s, c], ([s], c), ([[s], [c]],)):
        with llama_tiny.apply(*args) as session:
            llama_tiny.run(ids)
        torch.testing.assert_close(session.cache["resid_post.1"], ref, rtol=0, atol=0)
    with pytest.raises(InputError, match="is a float"):
        with llama_tiny.apply([s, 1.0]):
            pass


def test_partial_forwards_take_one_or_a_list(llama_tiny: Any) -> None:
    ids = random_ids((1, 6), seed=4)
    s = _steer(llama_tiny)
    logits_one, kv = forward_with_kv(llama_tiny, ids, s)
    assert not torch.allclose(logits_one, forward_with_kv(llama_tiny, ids)[0])  # the one Steer was applied
    torch.testing.assert_close(forward_with_kv(llama_tiny, ids, [s])[0], logits_one, rtol=0, atol=0)
    past = kv_prefix(llama_tiny, kv, 3, 1)
    one = run_from_layer(llama_tiny, None, 0, ids[:, 3:], past=past, interventions=s)
    past = kv_prefix(llama_tiny, kv, 3, 1)
    assert not torch.allclose(one, run_from_layer(llama_tiny, None, 0, ids[:, 3:], past=past))
    past = kv_prefix(llama_tiny, kv, 3, 1)
    torch.testing.assert_close(run_from_layer(llama_tiny, None, 0, ids[:, 3:], past=past, interventions=[s]), one,
                               rtol=0, atol=0)


def test_binding_candidates_take_one_or_a_list(llama_tiny: Any) -> None:
    prompts = [SimpleNamespace(ids=tuple(int(i) for i in random_ids((5,), seed=5)))]
    s = _steer(llama_tiny)
    one, _ = candidate_logprobs(llama_tiny, prompts, [[1, 2]], s)  # type: ignore[arg-type]
    many, _ = candidate_logprobs(llama_tiny, prompts, [[1, 2]], [s])  # type: ignore[arg-type]
    none, _ = candidate_logprobs(llama_tiny, prompts, [[1, 2]])  # type: ignore[arg-type]
    assert not torch.allclose(one, none)  # the one Steer was applied
    torch.testing.assert_close(one, many, rtol=0, atol=0)


def test_evaluations_get_a_list_whatever_they_are_given(llama_tiny: Any) -> None:
    seen: list[Any] = []

    def my_eval(model: Any, interventions: Any) -> float:
        seen.append(interventions)
        return 1.0

    s = _steer(llama_tiny)
    assert run_eval(my_eval, llama_tiny, s) == {"score": 1.0}
    assert run_eval(my_eval, llama_tiny, [[s]]) == {"score": 1.0}
    assert seen == [[s], [s]]


def test_save_interventions_takes_one(tmp_path: Any, llama_tiny: Any) -> None:
    s = _steer(llama_tiny)
    save_interventions(s, tmp_path / "one")
    assert load_interventions(tmp_path / "one") == [s]
