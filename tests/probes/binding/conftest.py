"""Fixtures for the binding tests: a fake tokenizer, the toy task (``tests/toys.py``), a tiny model using both."""

from __future__ import annotations

import pytest
from toys import FakeTokenizer, binding_task


@pytest.fixture
def fake_tok() -> FakeTokenizer:
    return FakeTokenizer()


@pytest.fixture
def toy_task():  # type: ignore[no-untyped-def]
    return binding_task()


@pytest.fixture
def toy_model(llama_tiny, fake_tok):  # type: ignore[no-untyped-def]
    from lmscope.interventions import HookedModel

    return HookedModel(llama_tiny.hf_model, fake_tok)
