"""Binding tasks and prompts: templates, splits, exact token spans, answer tokens and bad input."""

from __future__ import annotations

import pytest

from lmscope.interventions.errors import InputError
from lmscope.probes.binding import SHIPPED, BindingTask, build_prompt, load_task, sample_contexts, split_pool
from lmscope.probes.binding.prompts import Context


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_splits_are_disjoint(name: str) -> None:
    task = load_task(name)
    for pools in (task.entities, task.attributes):
        assert set(pools["train"]) and set(pools["test"])
        assert not set(pools["train"]) & set(pools["test"])
    assert task.slots() == 2


def test_split_pool_is_disjoint_and_complete() -> None:
    split = split_pool([f"n{i}" for i in range(11)] + ["n0"], 0.3, seed=1)
    assert not set(split["train"]) & set(split["test"])
    assert set(split["train"]) | set(split["test"]) == {f"n{i}" for i in range(11)}
    assert len(split["test"]) == 3


def test_spans_decode_to_names_multi_token(fake_tok, toy_task) -> None:
    ctx = Context(("Alice", "Bo"), ("Kathmandu", "Oslo"))
    p = build_prompt(fake_tok, toy_task, ctx, 1)
    assert p.text == "Ctx: Alice in Kathmandu. Bo in Oslo. Q Bo:"
    assert p.entity_spans[0][1] - p.entity_spans[0][0] == 2  # " Ali" + "ce"
    for names, spans in ((ctx.entities, p.entity_spans), (ctx.attributes, p.attribute_spans)):
        for name, (a, b) in zip(names, spans):
            assert fake_tok.decode(p.ids[a:b]).strip() == name
    assert fake_tok.decode(p.ids[:p.context_len]) == "Ctx: Alice in Kathmandu. Bo in Oslo."
    assert p.answer == fake_tok(" Oslo")["input_ids"][0] and p.query_slot == 1
    assert p.candidates[0] == fake_tok(" Kathmandu")["input_ids"][0]


def test_indexed_template_and_answer_map(fake_tok) -> None:
    task = BindingTask("par", "", " {E0} and {E1} in {A0} and {A1}.", " Q {entity}:",
                       {"test": ("Ann", "Bob")}, {"test": ("Fr", "It")}, answers={"Fr": "Paris", "It": "Rome"})
    p = build_prompt(fake_tok, task, Context(("Ann", "Bob"), ("Fr", "It")), "Bob")
    assert p.text == " Ann and Bob in Fr and It. Q Bob:"
    assert fake_tok.decode(p.ids[slice(*p.attribute_spans[1])]).strip() == "It"
    assert p.answer == fake_tok(" Rome")["input_ids"][0]
    with pytest.raises(InputError, match="exactly 2 slots"):
        task.slots(3)


@pytest.mark.parametrize("context, query, match", [
    (" nothing here.", " Q {entity}:", "no entity/attribute slots"),
    (" {entity} only.", " Q {entity}:", "needs both"),
    (" {E0} and {A1}.", " Q {entity}:", "E0..E1|A0..A1"),
    (" {entity} in {attribute}.", " Q:", "needs an {entity} slot"),
])
def test_bad_templates(context: str, query: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        BindingTask("bad", "", context, query, {"test": ("a", "b")}, {"test": ("x", "y")})


def test_pool_too_small_and_empty_name(fake_tok, toy_task) -> None:
    with pytest.raises(InputError, match="at least 5 entities and 5 attributes"):
        sample_contexts(fake_tok, toy_task, 2, n_entities=5)
    with pytest.raises(InputError, match="tokenize to nothing"):
        build_prompt(fake_tok, toy_task, Context(("Ann", "  "), ("Rome", "Oslo")), 0)


def test_absent_query_only_for_calibration(fake_tok, toy_task) -> None:
    ctx = Context(("Ann", "Bob"), ("Rome", "Oslo"))
    with pytest.raises(InputError, match="not in the context"):
        build_prompt(fake_tok, toy_task, ctx, "Zed")
    p = build_prompt(fake_tok, toy_task, ctx, "Zed", allow_absent=True)
    assert p.query_slot is None and p.answer is None and p.text.endswith("Q Zed:")


def test_sampled_contexts_have_distinct_answers(fake_tok, toy_task) -> None:
    ctxs = sample_contexts(fake_tok, toy_task, 20, split="train", seed=3)
    assert len(ctxs) == 20 and len(set(ctxs)) > 1
    for c in ctxs:
        assert set(c.entities) <= set(toy_task.entities["train"])
        assert len({fake_tok(" " + a)["input_ids"][0] for a in c.attributes}) == 2
    assert Context(("a", "b", "c"), ("x", "y", "z")).rolled(1) == Context(("b", "c", "a"), ("y", "z", "x"))


def test_user_task_from_template(fake_tok) -> None:
    task = BindingTask.from_template("pets", " {entity} owns a {attribute}.", ["Ann", "Bob", "Cy", "Dee"],
                                     ["cat", "dog", "owl", "rat"], query=" Q {entity}:", test_fraction=0.5)
    assert not set(task.entities["train"]) & set(task.entities["test"])
    assert len(task.attributes["test"]) == 2
    ctx = sample_contexts(fake_tok, task, 1, split="test")[0]
    p = build_prompt(fake_tok, task, ctx, 0)
    assert p.text == f" {ctx.entities[0]} owns a {ctx.attributes[0]}. {ctx.entities[1]} owns a {ctx.attributes[1]}." \
                     f" Q {ctx.entities[0]}:"
    with pytest.raises(InputError, match="Unknown binding task"):
        load_task("nope")
