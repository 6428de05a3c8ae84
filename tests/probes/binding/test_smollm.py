"""SmolLM2: spans of every shipped template under the real tokenizer; freezing changes nothing."""

from __future__ import annotations

import pytest
import torch

from lmscope.probes.binding import SHIPPED, build_prompt, load_task, sample_contexts
from lmscope.probes.binding.frozen import FrozenContext
from lmscope.probes.binding.prompts import Context
from lmscope.probes.binding.runs import candidate_logprobs

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", SHIPPED)
def test_spans_match_decoded_text(smollm, name: str) -> None:
    tok, task = smollm.tokenizer, load_task(name)
    contexts = [c for split in ("train", "test") for c in sample_contexts(tok, task, 12, split=split, seed=1)]
    ents = {"capitals": ("Irene", "Tina"), "parallel": ("Fiona", "Irene"), "fruits": ("Irene", "Fiona")}
    attrs = {"fruits": ("melon", "apricot"), "shapes": ("hexagon", "star"), "capitals": ("Thailand", "Turkey")}
    if name in ents or name in attrs:  # multi-token names and multi-token answers (Bangkok, Ankara)
        base = contexts[0]
        contexts.append(Context(ents.get(name, base.entities), attrs.get(name, base.attributes)))
    for c in contexts:
        for q in range(2):
            p = build_prompt(tok, task, c, q)
            for names, spans in ((c.entities, p.entity_spans), (c.attributes, p.attribute_spans)):
                for value, (a, b) in zip(names, spans):
                    assert tok.decode(list(p.ids[a:b])).strip() == value
            assert tok.decode(list(p.ids[:p.context_len])).endswith(p.text[:p.text.index("\n\nQuestion")][-20:])
            assert p.answer == tok(task.answer(c.attributes[q]), add_special_tokens=False)["input_ids"][0]
    if name in ents:
        assert max(b - a for a, b in build_prompt(tok, task, contexts[-1], 0).entity_spans) > 1


def test_frozen_context_changes_nothing_on_smollm(smollm) -> None:
    tok, task = smollm.tokenizer, load_task("capitals")
    prompts = [build_prompt(tok, task, c, i % 2) for i, c in enumerate(sample_contexts(tok, task, 2, seed=4))]
    cands = [p.candidates for p in prompts]
    clean, cache = candidate_logprobs(smollm, prompts, cands, cache=True)
    frozen, _ = candidate_logprobs(smollm, prompts, cands, [FrozenContext(smollm, prompts, cache).patch])
    torch.testing.assert_close(frozen, clean, rtol=1e-4, atol=1e-4)


def test_key_only_shift_equals_rotating_only_the_keys(smollm, keys_by_hand) -> None:
    """SmolLM2's RoPE: rotating k_proj's output by R(d) == its own RoPE with the keys' positions + d."""
    from lmscope.probes.binding.keyshift import key_position_shift

    ids = smollm.tokenize("Anna lives in Paris. Tom lives in Rome. Tom lives in").input_ids
    shifts = torch.zeros_like(ids)
    shifts[0, 1:3], shifts[0, 6:8] = 5, -5
    with key_position_shift(smollm, shifts):
        got = smollm.run(ids).logits
    torch.testing.assert_close(got, keys_by_hand(smollm, ids, shifts), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, smollm.run(ids).logits, atol=1e-3)
