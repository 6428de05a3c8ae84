"""Generation under interventions: positions keep their meaning with a KV cache; padding is never steered."""

from __future__ import annotations

import pytest
import torch

from lmscope.interventions import Cache, Edit, HookedModel, Steer


def greedy_without_cache(model: HookedModel, prompt: list[int], n: int, make_ivs) -> list[int]:
    """Reference: a full forward per step; ``make_ivs(total_len)`` gives the interventions for that step
    with positions written explicitly (a plain run has no notion of "generated")."""
    tokens = list(prompt)
    for _ in range(n):
        logits = model.run([tokens], make_ivs(len(tokens))).logits
        tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(prompt):]


def test_generate_with_kv_cache_equals_recomputation(tiny: HookedModel) -> None:
    prompt = [3, 14, 15, 9, 26]
    n = len(prompt)
    v = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(0)) * 2
    cases = {
        None: lambda total: None,
        "prompt": lambda total: slice(0, n),
        "generated": lambda total: list(range(n, total)) if total > n else None,
        -1: lambda total: [n - 1],
        (0, 3): lambda total: [0, 3],
    }
    for positions, explicit in cases.items():
        spec = list(positions) if isinstance(positions, tuple) else positions
        gen = tiny.generate([prompt], max_new_tokens=4, interventions=[Steer("resid_post.0", v, positions=spec)])

        def make_ivs(total: int, explicit=explicit, spec=spec):
            pos = explicit(total)
            if pos is None and spec == "generated":
                return []
            return [Steer("resid_post.0", v, positions=pos)]
        expected = greedy_without_cache(tiny, prompt, 4, make_ivs)
        assert gen.new_tokens[0].tolist() == expected, positions


def test_generate_under_attn_pattern_edit_equals_recomputation(tiny: HookedModel) -> None:
    """The pattern-exposing attention (eager swap or a port) honours the KV cache and sliding windows."""
    if "attn_pattern" not in tiny.available_kinds:
        pytest.skip(f"{tiny.arch.name} computes attention inline: no attn_pattern to edit "
                    "(test_attn_pattern_matches_hf_eager checks the error)")
    prompt = [3, 14, 15, 9, 26]

    def drop_head0(p: torch.Tensor) -> torch.Tensor:
        p = p.clone()
        p[:, 0] = 0
        return p
    gen = tiny.generate([prompt], max_new_tokens=4, interventions=[Edit("attn_pattern.0", drop_head0)])
    expected = greedy_without_cache(tiny, prompt, 4, lambda total: [Edit("attn_pattern.0", drop_head0)])
    assert gen.new_tokens[0].tolist() == expected


def test_padded_batch_generation_equals_unbatched(tiny: HookedModel) -> None:
    prompts = [[3, 14, 15, 9, 26], [5, 35], [8, 9, 7, 9]]
    v = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(1)) * 2
    ivs = [Steer("resid_pre.1", v, positions="all")]
    batched = tiny.generate(prompts, max_new_tokens=4, interventions=ivs)
    for i, p in enumerate(prompts):
        single = tiny.generate([p], max_new_tokens=4, interventions=ivs)
        assert batched.new_tokens[i].tolist() == single.new_tokens[0].tolist()


def test_cache_during_generation_concatenates_steps(llama_tiny: HookedModel) -> None:
    cache = Cache("resid_post.0")
    with llama_tiny.apply(cache) as session:
        gen = llama_tiny.generate([[1, 2, 3]], max_new_tokens=3)
    # prompt pass (3 tokens) + 2 single-token steps (the last token is never fed back)
    assert session.cache["resid_post.0"].shape == (1, 5, llama_tiny.d_model)
    full = llama_tiny.run(gen.tokens[:, :5], [Cache("resid_post.0")]).cache["resid_post.0"]
    assert torch.allclose(session.cache["resid_post.0"], full, atol=1e-5)
