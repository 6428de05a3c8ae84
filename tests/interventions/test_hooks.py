"""Hooks are lazy (only requested sites) and always removed, also on exceptions and interrupts."""

from __future__ import annotations

import pytest
import torch
from tiny_models import on_device

from lmscope.interventions import Cache, Edit, HookedModel, InputError, Steer


def hook_count(model: HookedModel) -> int:
    n = 0
    for mod in model.hf_model.modules():
        n += len(mod._forward_hooks) + len(mod._forward_pre_hooks)
    return n


def test_only_requested_sites_get_hooks(llama_tiny: HookedModel) -> None:
    assert hook_count(llama_tiny) == 0
    with llama_tiny.apply(Cache("resid_post.1")):
        # one context pre-hook on the model + one hook on layer 1
        assert hook_count(llama_tiny) == 2
    assert hook_count(llama_tiny) == 0


class Boom(Exception):
    pass


def explode(x: torch.Tensor) -> torch.Tensor:
    raise Boom("inside the forward")


def test_hooks_removed_after_exception_in_run(llama_tiny: HookedModel) -> None:
    with pytest.raises(Boom):
        llama_tiny.run([[1, 2, 3]], [Cache("resid_post.*"), Edit("mlp_out.1", explode), Cache("attn_pattern.0")])
    assert hook_count(llama_tiny) == 0
    assert llama_tiny.hf_model.config._attn_implementation == "sdpa"


def test_hooks_removed_after_exception_inside_apply(llama_tiny: HookedModel) -> None:
    with pytest.raises(RuntimeError, match="user code"):
        with llama_tiny.apply(Steer("resid_pre.0", torch.ones(llama_tiny.d_model)), Cache("attn_pattern.*")):
            assert hook_count(llama_tiny) > 0
            raise RuntimeError("user code")
    assert hook_count(llama_tiny) == 0
    assert llama_tiny.hf_model.config._attn_implementation == "sdpa"


def test_hooks_removed_after_keyboard_interrupt(llama_tiny: HookedModel) -> None:
    def interrupt(x: torch.Tensor) -> torch.Tensor:
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        llama_tiny.run([[1, 2, 3]], [Edit("resid_post.0", interrupt)])
    assert hook_count(llama_tiny) == 0


def test_validation_error_attaches_nothing(llama_tiny: HookedModel) -> None:
    with pytest.raises(ValueError, match="d_model"):
        llama_tiny.run([[1, 2, 3]], [Cache("resid_post.0"), Steer("resid_post.1", torch.ones(5))])
    assert hook_count(llama_tiny) == 0


def test_apply_affects_plain_hf_calls(llama_tiny: HookedModel) -> None:
    tokens = on_device(torch.tensor([[1, 2, 3, 4]]))  # raw HF calls need ids on the model's device
    v = on_device(torch.randn(llama_tiny.d_model, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        plain = llama_tiny.hf_model(tokens).logits
        with llama_tiny.apply(Steer("resid_post.0", v)):
            steered = llama_tiny.hf_model(tokens).logits
    assert torch.allclose(steered, llama_tiny.run(tokens, [Steer("resid_post.0", v)]).logits, atol=1e-6)
    assert not torch.allclose(plain, steered)


def test_composition_order_on_one_site(llama_tiny: HookedModel) -> None:
    tokens = torch.tensor([[1, 2, 3, 4]])
    v = torch.ones(llama_tiny.d_model)
    before, after = Cache("resid_post.0"), Cache("resid_post.0")
    llama_tiny.run(tokens, [before, Steer("resid_post.0", v, scale=2.0), after])
    assert torch.allclose(after["resid_post.0"] - before["resid_post.0"], 2.0 * on_device(v).expand(1, 4, -1),
                          atol=1e-6)
    # Edits compose in list order: (x * 2) + 1 vs (x + 1) * 2
    a = llama_tiny.run(tokens, [Edit("resid_post.0", lambda x: x * 2), Edit("resid_post.0", lambda x: x + 1),
                                Cache("resid_post.0")]).cache["resid_post.0"]
    assert torch.allclose(a, before["resid_post.0"] * 2 + 1, atol=1e-6)


def test_write_resid_mid(llama_tiny: HookedModel) -> None:
    tokens = torch.tensor([[1, 2, 3, 4]])
    v = on_device(torch.randn(llama_tiny.d_model, generator=torch.Generator().manual_seed(1)))
    base = llama_tiny.run(tokens, [Cache(["resid_mid.1", "resid_post.1", "mlp_out.1"])]).cache
    new = llama_tiny.run(tokens, [Steer("resid_mid.1", v), Cache(["resid_mid.1", "resid_post.1", "mlp_out.1"])]).cache
    assert torch.allclose(new["resid_mid.1"], base["resid_mid.1"] + v, atol=1e-5)
    # the MLP reads the steered stream (its output moves) and the residual carries it
    assert not torch.allclose(new["mlp_out.1"], base["mlp_out.1"], atol=1e-4)
    assert torch.allclose(new["resid_post.1"], new["resid_mid.1"] + new["mlp_out.1"], atol=1e-5)


class _Reader(Cache):
    """A read-only intervention that (wrongly) returns a value."""

    def __call__(self, value: torch.Tensor, site, ctx) -> torch.Tensor:  # type: ignore[override]
        super().__call__(value, site, ctx)
        return value * 2


class _Writer(Edit):
    writes = True


def test_read_only_interventions_may_not_write(llama_tiny: HookedModel) -> None:
    """``writes = False`` is a checked contract: a reader that returns a value fails loudly, hooks removed."""
    assert not Cache.writes and Steer.writes and Edit.writes
    with pytest.raises(InputError, match=r"_Reader is read-only \(writes = False\).*resid_post\.1"):
        llama_tiny.run([[1, 2, 3]], [_Reader("resid_post.1")])
    assert hook_count(llama_tiny) == 0
    plain = llama_tiny.run([[1, 2, 3]]).logits
    doubled = llama_tiny.run([[1, 2, 3]], [_Writer("resid_post.1", lambda v: v * 2)]).logits
    assert not torch.equal(plain, doubled)  # the same return value is fine from a writer
