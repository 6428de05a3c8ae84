"""Key-only position shift: keys move, queries stay (vs an independent RoPE patch, and vs position_ids)."""

from __future__ import annotations

import pytest
import torch

from lmscope.interventions.errors import InputError
from lmscope.probes.binding.experiments import position_shift
from lmscope.probes.binding.keyshift import key_position_shift


def test_key_shift_equals_rotating_only_the_keys(toy_model, keys_by_hand) -> None:
    ids = torch.randint(5, 60, (2, 9), generator=torch.Generator().manual_seed(0))
    shifts = torch.zeros_like(ids)
    shifts[0, 2:4], shifts[1, 5:7], shifts[1, 1] = 3, -2, 4
    clean = toy_model.run(ids).logits  # before any shift: the reference the later checks compare with
    with key_position_shift(toy_model, shifts):
        got = toy_model.run(ids).logits
    want = keys_by_hand(toy_model, ids, shifts)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, clean, atol=1e-4)
    # tokens before the first shifted key see nothing moved: identical
    torch.testing.assert_close(got[0, :2], clean[0, :2], rtol=0, atol=1e-6)
    with key_position_shift(toy_model, torch.zeros_like(ids)):  # zero shift = clean, hooks removed after
        torch.testing.assert_close(toy_model.run(ids).logits, clean, rtol=0, atol=1e-6)
    assert torch.equal(toy_model.run(ids).logits, clean)


def test_keys_only_differs_from_moving_keys_and_queries(toy_model) -> None:
    """Moving every token by d through position_ids changes nothing (RoPE is relative); moving only the keys does."""
    ids = torch.randint(5, 60, (1, 8), generator=torch.Generator().manual_seed(0))
    clean = toy_model.run(ids).logits
    both = toy_model.run(ids, position_ids=torch.arange(8)[None] + 5).logits
    torch.testing.assert_close(both, clean, rtol=1e-4, atol=1e-4)
    with key_position_shift(toy_model, torch.full_like(ids, 5)):
        keys = toy_model.run(ids).logits
    assert not torch.allclose(keys, clean, atol=1e-3)


def test_key_shift_bad_input(toy_model) -> None:
    ones = torch.ones(1, 3, dtype=torch.long)
    before = toy_model.run(ones).logits
    with pytest.raises(InputError, match="int tensor"):
        with key_position_shift(toy_model, torch.zeros(1, 4)):
            pass
    with pytest.raises(InputError, match=r"shifts for \(1, 4\)"):
        with key_position_shift(toy_model, torch.zeros(1, 4, dtype=torch.long)):
            toy_model.run(torch.randint(5, 60, (1, 6), generator=torch.Generator().manual_seed(0)))
    assert torch.equal(toy_model.run(ones).logits, before)  # the refused shift left no hook behind


def test_position_shift_keys_only(toy_model, toy_task) -> None:
    keys = position_shift(toy_model, toy_task, 3, fractions=(0.0, 1.0), progress=False, keys_only=True)
    both = position_shift(toy_model, toy_task, 3, fractions=(0.0, 1.0), progress=False)
    assert keys["logprob_right"][0] == pytest.approx(both["logprob_right"][0], abs=1e-5)  # no shift: same run
    assert keys["logprob_right"][1] != pytest.approx(both["logprob_right"][1], abs=1e-5)
    assert keys["method"].startswith("keys re-rotated")


def test_key_shift_refused_without_llama_style_rope() -> None:
    from tiny_models import build_tiny

    from lmscope.interventions import HookedModel
    from lmscope.probes.binding.keyshift import key_shift_unsupported

    gpt2 = HookedModel(build_tiny("gpt2"))  # learned absolute positions: no rotary embedding
    assert "one rotary embedding" in (key_shift_unsupported(gpt2) or "")
    with pytest.raises(InputError, match="one rotary embedding"):
        with key_position_shift(gpt2, torch.zeros(1, 3, dtype=torch.long)):
            pass


@pytest.mark.parametrize("arch", ["qwen3", "gemma3_text"])
def test_key_shift_after_a_key_norm_and_per_layer_type_rope(arch: str, monkeypatch) -> None:
    """Qwen3 and Gemma 3 normalise keys per head before RoPE; Gemma 3 also keeps one RoPE table per layer type
    (different thetas on sliding and global layers). Reference: the model's own apply_rotary_pos_emb with the
    keys' cos/sin taken at position + shift from the table this layer uses."""
    import importlib

    from tiny_models import build_tiny

    from lmscope.interventions import HookedModel
    from lmscope.probes.binding.keyshift import key_shift_unsupported

    model = HookedModel(build_tiny(arch))
    assert key_shift_unsupported(model) is None
    rope = model.hf_model.model.rotary_emb
    per_type = isinstance(rope.rope_type, dict)
    assert per_type == (arch == "gemma3_text")
    ids = torch.randint(5, 60, (2, 9), generator=torch.Generator().manual_seed(0))
    shifts = torch.zeros_like(ids)
    shifts[0, 2:4], shifts[1, 5:7] = 3, -2
    pos = torch.arange(ids.shape[1])[None].expand_as(ids)
    ml = importlib.import_module(type(model.hf_model).__module__)
    original = ml.apply_rotary_pos_emb
    seen: set = set()

    def patched(q, k, cos, sin, *args, **kwargs):  # type: ignore[no-untyped-def]
        q_out, _ = original(q, k, cos, sin, *args, **kwargs)
        if per_type:  # which table this layer uses: the one whose cos at the true positions matches
            lt = next(t for t in rope.layer_types if torch.allclose(rope(k, pos.to(k.device), t)[0], cos))
            seen.add(lt)
            cos_k, sin_k = rope(k, (pos + shifts).to(k.device), lt)  # the reference on the model's device
        else:
            cos_k, sin_k = rope(k, (pos + shifts).to(k.device))
        _, k_out = original(q, k, cos_k, sin_k, *args, **kwargs)
        return q_out, k_out

    with key_position_shift(model, shifts):
        got = model.run(ids).logits
    monkeypatch.setattr(ml, "apply_rotary_pos_emb", patched)
    want = model.run(ids).logits
    monkeypatch.setattr(ml, "apply_rotary_pos_emb", original)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, model.run(ids).logits, atol=1e-4)
    if per_type:
        assert len(seen) == 2  # both tables were exercised
