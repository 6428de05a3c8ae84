"""Sessions are context-local: interventions act only on forwards run in the context that opened them.

The deterministic tests hold one thread's session open (hooks registered on the shared modules) while another
thread runs its forwards, so the interleaving that used to leak is guaranteed; the stress test runs both loops
freely. Every result is compared exactly (torch.equal) with the same call run alone.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

import pytest
import torch
from tiny_models import on_device

from lmscope.interventions import Ablate, Cache, Edit, HookedModel, Steer
from lmscope.interventions.backends import attention

PROMPTS = [[5, 17, 3, 44, 9], [8, 2, 61]]


def hook_count(model: HookedModel) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf_model.modules())


def while_open(model: HookedModel, interventions: list[Any], body: Callable[[], Any]) -> Any:
    """Run ``body`` in another thread while this thread holds ``model.apply(interventions)`` open."""
    out: dict[str, Any] = {}

    def worker() -> None:
        try:
            out["value"] = body()
        except BaseException as err:  # surfaced in the main thread
            out["error"] = err
    with model.apply(interventions):
        assert hook_count(model) > 0
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def steer(model: HookedModel, scale: float = 4.0) -> Steer:
    return Steer("resid_post.1", torch.ones(model.d_model), scale)


def test_other_threads_run_is_not_steered(tiny: HookedModel) -> None:
    alone = tiny.run(PROMPTS).logits
    got = while_open(tiny, [steer(tiny)], lambda: tiny.run(PROMPTS).logits)
    assert torch.equal(got, alone)
    assert hook_count(tiny) == 0


def test_other_threads_interventions_apply_alone(tiny: HookedModel) -> None:
    mine = [Ablate("head_z.0", heads=[1]), Cache("attn_out.1")]
    alone = tiny.run(PROMPTS, mine)
    got = while_open(tiny, [steer(tiny), Cache("attn_out.1"), Edit("mlp_out.0", lambda x: 2 * x)],
                     lambda: tiny.run(PROMPTS, mine))
    assert torch.equal(got.logits, alone.logits)
    assert torch.equal(got.cache["attn_out.1"], alone.cache["attn_out.1"])


def test_attn_pattern_session_does_not_leak_eager_attention(tiny: HookedModel) -> None:
    """A pattern session swaps the config's attention; other threads still get their SDPA result, bit for bit."""
    if "attn_pattern" not in tiny.available_kinds:
        pytest.skip(f"{tiny.arch.name} has no attn_pattern in this configuration (ALiBi)")
    if tiny.attention_port is not None:
        pytest.skip("Falcon's pattern port replaces the attention module's forward for the session; other threads "
                    "then run the eager port (pattern hooks gated off): equal up to float rounding, not bit for bit")
    impl = tiny.hf_model.config._attn_implementation
    alone = tiny.run(PROMPTS).logits
    seen = Cache("attn_pattern.0")
    got = while_open(tiny, [seen], lambda: (tiny.hf_model.config._attn_implementation, tiny.run(PROMPTS).logits))
    assert got[0] == attention.PATTERN_ATTENTION  # the swap was live while the other thread ran...
    assert torch.equal(got[1], alone)  # ...and its forward was exactly the original implementation's
    assert tiny.hf_model.config._attn_implementation == impl
    with pytest.raises(KeyError):
        seen.cache["attn_pattern.0"]  # the other thread's forward recorded nothing here


def test_pattern_sessions_in_two_threads(llama_tiny: HookedModel) -> None:
    model = llama_tiny
    zero_head = Edit("attn_pattern.1", lambda p: p * on_device(torch.tensor([0.0, 1, 1, 1])).view(1, 4, 1, 1))
    alone = model.run(PROMPTS, [zero_head, Cache("attn_pattern.0")])
    got = while_open(model, [Cache("attn_pattern.*")], lambda: model.run(PROMPTS, [zero_head, Cache("attn_pattern.0")]))
    assert torch.equal(got.logits, alone.logits)
    assert torch.equal(got.cache["attn_pattern.0"], alone.cache["attn_pattern.0"])
    assert model.hf_model.config._attn_implementation == "sdpa"
    assert attention.idle()


def test_generate_in_another_thread(llama_tiny: HookedModel) -> None:
    model = llama_tiny
    alone = model.generate(PROMPTS, 6, interventions=[Steer("resid_pre.2", torch.ones(model.d_model), -2.0)])
    plain = model.generate(PROMPTS, 6)
    got = while_open(model, [steer(model), Cache("attn_pattern.0")], lambda: (
        model.generate(PROMPTS, 6, interventions=[Steer("resid_pre.2", torch.ones(model.d_model), -2.0)]),
        model.generate(PROMPTS, 6)))
    assert torch.equal(got[0].tokens, alone.tokens)
    assert torch.equal(got[1].tokens, plain.tokens)


def test_apply_body_in_another_thread_sees_only_its_own_session(llama_tiny: HookedModel) -> None:
    model = llama_tiny
    batch = model.tokenize(PROMPTS)

    def direct(m: HookedModel) -> torch.Tensor:
        with torch.no_grad():
            return m.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              position_ids=batch.position_ids).logits

    def other_apply() -> torch.Tensor:
        with model.apply(Ablate("mlp_out.0")):
            return direct(model)
    with model.apply(Ablate("mlp_out.0")):
        alone = direct(model)
    got = while_open(model, [steer(model, -3.0)], other_apply)
    assert torch.equal(got, alone)
    assert not torch.equal(got, direct(model))  # the ablation did act


def test_free_running_threads_match_sequential(llama_tiny: HookedModel) -> None:
    """Two loops with different interventions, interleaved however the scheduler likes."""
    model = llama_tiny
    jobs = {
        "steer": [steer(model)],
        "pattern": [Edit("attn_pattern.0", lambda p: p.flip(-1)), Cache("resid_post.2")],
        "plain": [],
    }
    expected = {k: model.run(PROMPTS, v).logits for k, v in jobs.items()}
    results: dict[str, list[torch.Tensor]] = {k: [] for k in jobs}
    start = threading.Barrier(len(jobs))

    def loop(name: str) -> None:
        start.wait()
        for _ in range(15):
            results[name].append(model.run(PROMPTS, jobs[name]).logits)
    threads = [threading.Thread(target=loop, args=(k,)) for k in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in jobs:
        assert len(results[k]) == 15
        assert all(torch.equal(r, expected[k]) for r in results[k]), k
    assert hook_count(model) == 0 and model.hf_model.config._attn_implementation == "sdpa"


def test_nested_sessions_compose_outer_first(llama_tiny: HookedModel) -> None:
    model = llama_tiny
    outer = Edit("resid_post.1", lambda x: x * 2)
    inner = Edit("resid_post.1", lambda x: x + 1)
    both = model.run(PROMPTS, [outer, inner]).logits  # (x * 2) + 1, not (x + 1) * 2
    with model.apply(outer):
        nested = model.run(PROMPTS, [inner]).logits
        outer_only = model.run(PROMPTS).logits
    assert torch.equal(nested, both)
    assert torch.equal(outer_only, model.run(PROMPTS, [outer]).logits)
    assert not torch.equal(both, model.run(PROMPTS, [inner, outer]).logits)


def test_thread_started_inside_a_session_does_not_inherit_it(llama_tiny: HookedModel) -> None:
    model = llama_tiny
    plain = model.run(PROMPTS).logits
    out: list[torch.Tensor] = []
    with model.apply(steer(model)):
        t = threading.Thread(target=lambda: out.append(model.run(PROMPTS).logits))
        t.start()
        t.join()
        steered = model.run(PROMPTS).logits
    assert torch.equal(out[0], plain)
    assert not torch.equal(steered, plain)


def test_asyncio_tasks_have_their_own_sessions(llama_tiny: HookedModel) -> None:
    model = llama_tiny
    plain = model.run(PROMPTS).logits
    steered = model.run(PROMPTS, [steer(model)]).logits
    opened, done = asyncio.Event(), asyncio.Event()

    async def holder() -> torch.Tensor:
        with model.apply(steer(model)):
            opened.set()
            await done.wait()  # the other task runs while this session is open
            return model.run(PROMPTS).logits

    async def other() -> torch.Tensor:
        await opened.wait()
        value = model.run(PROMPTS).logits
        done.set()
        return value

    async def main() -> list[torch.Tensor]:
        return list(await asyncio.gather(holder(), other()))
    held, free = asyncio.run(main())
    assert torch.equal(held, steered)
    assert torch.equal(free, plain)


def test_kwargs_pre_hooks_accept_a_call_without_kwargs(llama_tiny: HookedModel) -> None:
    """PyTorch adds a kwargs pre-hook and its kwargs flag in two steps; another thread's forward in between calls
    it as hook(module, args). Seen as HTTP 500s with concurrent workbench clients; every such hook now passes."""
    model = llama_tiny
    with model.apply([Cache(["resid_pre.1", "resid_mid.1"])]):
        layer = model.layer_module(1)
        hooks = [h for h in layer._forward_pre_hooks.values()]
        assert hooks
        for hook in hooks:
            assert hook(layer, (torch.zeros(1, 2, model.d_model),)) is None
