"""Shared fixtures: tiny random models of every architecture, and the real SmolLM2 (loaded once)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import TINY_CONFIGS, build_tiny  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(params=sorted(TINY_CONFIGS))
def tiny_hf(request: pytest.FixtureRequest) -> torch.nn.Module:
    """Each tiny architecture in turn (a fresh random model per test)."""
    return build_tiny(request.param)


@pytest.fixture
def tiny(tiny_hf: torch.nn.Module):
    from lmscope.interventions import HookedModel

    return HookedModel(tiny_hf)


@pytest.fixture
def llama_tiny():
    from lmscope.interventions import HookedModel

    return HookedModel(build_tiny("llama"))


@pytest.fixture(scope="session")
def smollm():
    """The embedded default model (SmolLM2-135M-Instruct, float32, CPU); skipped only if not installed."""
    from lmscope.interventions import HookedModel
    from lmscope.interventions.defaults import default_gguf_path

    try:
        default_gguf_path()
    except Exception as err:  # pragma: no cover - make test installs it
        pytest.skip(f"default model not installed: {err}")
    return HookedModel.default()

# `lmscope decode` would use a `lmscope serve` answering on 127.0.0.1:8765; tests decode in-process unless a test
# points LMSCOPE_SERVER at a server it started itself.
os.environ["LMSCOPE_SERVER"] = "off"
