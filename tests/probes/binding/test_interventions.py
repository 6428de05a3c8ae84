"""BindingShift and the frozen-context / swap patches on a tiny model: exact equivalences, save/load, Cache."""

from __future__ import annotations

import pytest
import torch

from lmscope.interventions import Cache, Intervention, Patch, Steer, load_interventions, save_interventions
from lmscope.interventions.errors import InputError
from lmscope.probes.binding import BindingShift, build_prompt, candidate_logprobs, random_like
from lmscope.probes.binding.experiments import swap_patch
from lmscope.probes.binding.frozen import FrozenContext
from lmscope.probes.binding.prompts import Context


def _prompts(tok, task):
    return [build_prompt(tok, task, Context(("Fay", "Gus"), ("Bern", "Doha")), 0),
            build_prompt(tok, task, Context(("Alice", "Hal"), ("Riga", "Baku")), 1)]  # different lengths: padding


def _logits(model, prompts, ivs=()):
    from lmscope.interventions.inputs import pad

    return model.run(pad([list(p.ids) for p in prompts], 0, "left"), list(ivs)).last_logits()


def test_shift_equals_steers_at_span_tokens(toy_model, toy_task, fake_tok) -> None:
    prompts = _prompts(fake_tok, toy_task)
    torch.manual_seed(0)
    delta = torch.randn(2, 2, toy_model.d_model)  # layers 1 and 2, two span tokens
    plus = [[p.attribute_spans[0]] for p in prompts]
    minus = [[p.attribute_spans[1]] for p in prompts]
    got = _logits(toy_model, prompts, [BindingShift(delta, [1, 2], plus, minus)])
    steers = []
    for li, layer in enumerate((1, 2)):
        for j in range(2):  # the toy attributes are two tokens each
            steers.append(Steer(f"resid_pre.{layer}", delta[li, j], positions=[[p.attribute_spans[0][0] + j]
                                                                                for p in prompts]))
            steers.append(Steer(f"resid_pre.{layer}", delta[li, j], scale=-1.0,
                                positions=[[p.attribute_spans[1][0] + j] for p in prompts]))
    want = _logits(toy_model, prompts, steers)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, _logits(toy_model, prompts), atol=1e-3)


def test_self_patch_changes_nothing(toy_model, toy_task, fake_tok) -> None:
    prompts = _prompts(fake_tok, toy_task)
    clean, cache = candidate_logprobs(toy_model, prompts, [p.candidates for p in prompts], cache=True)
    frozen = FrozenContext(toy_model, prompts, cache)
    same = swap_patch(prompts, prompts, cache, "both", [0, 1])  # every span from its own run
    got, _ = candidate_logprobs(toy_model, prompts, [p.candidates for p in prompts], [frozen.patch, same])
    torch.testing.assert_close(got, clean, rtol=1e-5, atol=1e-5)


def test_swap_both_slots_at_embeddings_equals_reordered_context(toy_model, toy_task, fake_tok) -> None:
    """Exact where activations depend on the token alone (resid_pre.0, no freeze): swapping both entity and
    attribute spans of the two slots is re-ordering the statements. Not exact once later layers are patched
    with the context frozen: the moved activations keep what they attended to in their old slot."""
    ctx = Context(("Fay", "Gus"), ("Bern", "Doha"))
    p = build_prompt(fake_tok, toy_task, ctx, 0)
    reordered = build_prompt(fake_tok, toy_task, Context(ctx.entities[::-1], ctx.attributes[::-1]), "Fay")
    spans = [p.entity_spans[0], p.attribute_spans[0], p.entity_spans[1], p.attribute_spans[1]]
    other = [p.entity_spans[1], p.attribute_spans[1], p.entity_spans[0], p.attribute_spans[0]]
    pos = [t for a, b in spans for t in range(a, b)]
    src = [t for a, b in other for t in range(a, b)]
    _, cache = candidate_logprobs(toy_model, [p], [p.candidates], cache=True)
    embed_swap = Patch("resid_pre.0", cache, positions=[pos], source_positions=[src])
    torch.testing.assert_close(_logits(toy_model, [p], [embed_swap]), _logits(toy_model, [reordered]),
                               rtol=1e-5, atol=1e-5)
    frozen = FrozenContext(toy_model, [p], cache)
    all_swap = Patch("resid_pre.*", cache, positions=[pos], source_positions=[src])
    assert not torch.allclose(_logits(toy_model, [p], [frozen.patch, all_swap]), _logits(toy_model, [reordered]),
                              atol=1e-4)


def test_shift_composes_with_cache_in_one_run(toy_model, toy_task, fake_tok) -> None:
    prompts = _prompts(fake_tok, toy_task)
    _, cache = candidate_logprobs(toy_model, prompts, [p.candidates for p in prompts], cache=True)
    frozen = FrozenContext(toy_model, prompts, cache)
    delta = torch.randn(toy_model.n_layers, 1, toy_model.d_model, generator=torch.Generator().manual_seed(1))
    plus = [[p.entity_spans[0]] for p in prompts]
    shift = BindingShift(delta, range(toy_model.n_layers), plus, None)
    result = toy_model.run(_batch(prompts), [frozen.patch, shift, Cache("resid_pre.1")])
    for i, p in enumerate(prompts):
        got = result.cache.unpad("resid_pre.1", i)
        want = cache.unpad("resid_pre.1", i).clone()
        a, b = p.entity_spans[0]
        want[a:b] += delta[1, 0].to(want.device)  # the shift itself took a CPU delta
        torch.testing.assert_close(got[:p.context_len], want[:p.context_len], rtol=1e-5, atol=1e-5)


def _batch(prompts):
    from lmscope.interventions.inputs import pad

    return pad([list(p.ids) for p in prompts], 0, "left")


def test_shift_save_load_round_trip(tmp_path, toy_model, toy_task, fake_tok) -> None:
    prompts = _prompts(fake_tok, toy_task)
    delta = torch.randn(3, 2, toy_model.d_model, generator=torch.Generator().manual_seed(2))
    shift = BindingShift(delta, [0, 1, 2], [[p.entity_spans[0]] for p in prompts],
                         [[p.entity_spans[1]] for p in prompts], scale=0.5)
    shift.save(tmp_path / "one")
    loaded = Intervention.load(tmp_path / "one")
    assert loaded == shift
    torch.testing.assert_close(_logits(toy_model, prompts, [loaded]), _logits(toy_model, prompts, [shift]))
    _, cache = candidate_logprobs(toy_model, prompts, [p.candidates for p in prompts], cache=True)
    swap = swap_patch(prompts, prompts[::-1], cache, "entity", [0])
    save_interventions([FrozenContext(toy_model, prompts, cache).patch, swap, shift], tmp_path / "all")
    back = load_interventions(tmp_path / "all")
    assert [type(b).__name__ for b in back] == ["Patch", "Patch", "BindingShift"] and back[2] == shift
    assert back[1] == swap


def test_random_like_matches_norms() -> None:
    delta = torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(3))
    r = random_like(delta, seed=1)
    torch.testing.assert_close(r.norm(dim=-1), delta.norm(dim=-1))
    assert not torch.allclose(r, delta)


def test_shift_bad_input_leaves_no_hooks(toy_model, toy_task, fake_tok) -> None:
    prompts = _prompts(fake_tok, toy_task)
    with pytest.raises(InputError, match="delta has 2 layers"):
        BindingShift(torch.zeros(2, 1, toy_model.d_model), [0, 1, 2], [[(1, 2)]])
    with pytest.raises(InputError, match="start < stop"):
        BindingShift(torch.zeros(1, 1, toy_model.d_model), [0], [[(3, 3)]])
    with pytest.raises(InputError, match="plus and/or minus"):
        BindingShift(torch.zeros(1, 1, toy_model.d_model), [0])
    with pytest.raises(InputError, match=r"row 1 is None; give a list of \(start, stop\) spans"):
        BindingShift(torch.zeros(1, 1, toy_model.d_model), [0], [[(1, 2)], None])
    with pytest.raises(InputError, match="d_model"):
        toy_model.run(_batch(prompts), [BindingShift(torch.zeros(1, 1, 5), [0], [[(1, 2)], [(1, 2)]])])
    one_row = BindingShift(torch.ones(1, 1, toy_model.d_model), [1], [[(1, 2)]])
    clean = _logits(toy_model, prompts)
    with pytest.raises(InputError, match="spans for 1 rows but the batch has 2"):
        toy_model.run(_batch(prompts), [one_row])
    torch.testing.assert_close(_logits(toy_model, prompts), clean)  # hooks were removed
