"""Fixtures for the binding tests: a fake tokenizer, a toy task that fits the tiny models' 64 positions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake import FakeTokenizer  # noqa: E402


@pytest.fixture
def fake_tok() -> FakeTokenizer:
    return FakeTokenizer()


@pytest.fixture
def toy_task():
    from lmscope.probes.binding import BindingTask

    return BindingTask(name="toy", prefix="Ctx:", context=" {entity} in {attribute}.", query=" Q {entity}:",
                       entities={"train": ("Ann", "Bob", "Cy", "Dee", "Eve"),
                                 "test": ("Fay", "Gus", "Hal", "Ida", "Jo")},
                       attributes={"train": ("Rome", "Oslo", "Kiev", "Lima"), "test": ("Bern", "Doha", "Riga", "Baku")},
                       answers={}, n_entities=2)


@pytest.fixture
def toy_model(llama_tiny, fake_tok):
    from lmscope.interventions import HookedModel

    return HookedModel(llama_tiny.hf_model, fake_tok)
