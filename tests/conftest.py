"""Shared fixtures: tiny random models of every architecture, and the real SmolLM2 (loaded once)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import TEST_DEVICE, TINY_CONFIGS, build_tiny, skip_on_lazy  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# the tests choose torch's threads (above): lmscope's load-dependent default (interventions.threads) stays out, here
# and in the commands tests start, so neither their stderr nor their thread count depends on the machine's load
os.environ.setdefault("LMSCOPE_THREADS", "torch")

if TEST_DEVICE == "lazy":
    # PyTorch's lazy-tensor device (TorchScript backend) is a second device type on a CPU-only machine: any
    # test that mixes a CPU tensor into device work fails here just as it would on CUDA.
    import torch._lazy.ts_backend

    torch._lazy.ts_backend.init()

    def _sampled_on_cpu(method):  # type: ignore[no-untyped-def]
        """In-place sampling on a lazy tensor is recomputed each time the graph is materialised (a lazy-backend
        quirk, not device mixing): sample on the CPU and copy, so a randomly initialised lens stays one tensor."""
        def sample(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if self.device.type != "lazy":
                return method(self, *args, **kwargs)
            with torch.no_grad():
                return self.copy_(method(torch.empty(self.shape, dtype=self.dtype), *args, **kwargs))
        return sample

    torch.Tensor.normal_ = _sampled_on_cpu(torch.Tensor.normal_)  # type: ignore[method-assign]
    torch.Tensor.uniform_ = _sampled_on_cpu(torch.Tensor.uniform_)  # type: ignore[method-assign]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run ~10x faster on one intra-op thread than on two busy shared cores (no spin-waiting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=sorted(TINY_CONFIGS))
def tiny_hf(request: pytest.FixtureRequest, one_thread: None) -> torch.nn.Module:
    """Each tiny architecture in turn (a fresh random model per test)."""
    return build_tiny(request.param)


@pytest.fixture
def tiny(tiny_hf: torch.nn.Module):
    from lmscope.interventions import HookedModel

    return HookedModel(tiny_hf)


@pytest.fixture
def llama_tiny(one_thread: None):
    from lmscope.interventions import HookedModel

    return HookedModel(build_tiny("llama"))


#: The lazy device recompiles a real model's graph for each new shape (~1-2 min per forward here): it checks
#: device handling on the tiny models only; the real models run on the CPU or a GPU.
REAL_ON_LAZY = "real models take minutes per forward there"


def _smollm(dtype: torch.dtype):  # type: ignore[no-untyped-def]
    from lmscope.interventions import HookedModel
    from lmscope.interventions.defaults import default_gguf_path

    skip_on_lazy(REAL_ON_LAZY)
    try:
        default_gguf_path()
    except Exception as err:  # pragma: no cover - make test installs it
        pytest.skip(f"default model not installed: {err}")
    return HookedModel.default(dtype=dtype, device=TEST_DEVICE)


def _gemma3(dtype: torch.dtype):  # type: ignore[no-untyped-def]
    from lmscope.interventions import HookedModel
    from lmscope.interventions.defaults import GEMMA3_270M, gguf_path

    skip_on_lazy(REAL_ON_LAZY)
    try:
        gguf_path(GEMMA3_270M)
    except Exception as err:  # pragma: no cover - make test installs it
        pytest.skip(f"Gemma 3 270M not installed: {err}")
    return HookedModel.from_pretrained("gemma-3-270m", dtype=dtype, device=TEST_DEVICE)


@pytest.fixture(scope="session")
def smollm():
    """The embedded default model (SmolLM2-135M-Instruct, float32, on ``LMSCOPE_TEST_DEVICE``, default CPU);
    skipped only if not installed."""
    return _smollm(torch.float32)


@pytest.fixture(scope="session")
def gemma3():
    """The second embedded real model (Gemma 3 270M base, float32, CPU); skipped only if not installed."""
    return _gemma3(torch.float32)


@pytest.fixture(scope="session")
def smollm_bf16():
    """SmolLM2 loaded in bfloat16 (what a GPU user runs), on ``LMSCOPE_TEST_DEVICE``."""
    return _smollm(torch.bfloat16)


@pytest.fixture(scope="session")
def gemma3_bf16():
    """Gemma 3 270M loaded in bfloat16, on ``LMSCOPE_TEST_DEVICE``."""
    return _gemma3(torch.bfloat16)


#: Each real model with a factual prompt whose answer it knows (the real-model battery runs on all of them),
#: in float32 and in bfloat16.
REAL_MODELS = {"smollm2": ("smollm", "The capital of France is", " Paris"),
               "gemma3": ("gemma3", "The Eiffel Tower is in the city of", " Paris"),
               "smollm2-bf16": ("smollm_bf16", "The capital of France is", " Paris"),
               "gemma3-bf16": ("gemma3_bf16", "The Eiffel Tower is in the city of", " Paris")}


@pytest.fixture(params=sorted(REAL_MODELS))
def real_model(request: pytest.FixtureRequest):
    """(model, factual prompt, answer) for every real model the set-up installs."""
    fixture, prompt, answer = REAL_MODELS[request.param]
    return request.getfixturevalue(fixture), prompt, answer


# `lmscope decode` would use a `lmscope serve` answering on 127.0.0.1:8765; tests decode in-process unless a test
# points LMSCOPE_SERVER at a server it started itself.
os.environ["LMSCOPE_SERVER"] = "off"


@pytest.fixture
def use_smollm(smollm, monkeypatch: pytest.MonkeyPatch):
    """CLI tests: every model load inside ``main()`` returns the session's SmolLM2 instead of loading it again."""
    from lmscope.interventions import HookedModel

    monkeypatch.setattr(HookedModel, "from_pretrained", classmethod(lambda cls, *a, **k: smollm))
    return smollm
