"""Lens decoding from several threads equals decoding one after the other (sessions are context-local)."""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest
import torch

from lmscope.interventions import HookedModel, Steer
from lmscope.lens.lenses import LogitLens, TunedLens

PROMPTS = [[5, 17, 3, 44, 9], [8, 2, 61]]


def same(a: Any, b: Any) -> bool:
    return a.to_dict() == b.to_dict()


def run_threads(jobs: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {k: [] for k in jobs}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def loop(name: str) -> None:
        try:
            barrier.wait()
            for _ in range(rounds):
                out[name].append(jobs[name]())
        except BaseException as err:
            errors.append(err)
    threads = [threading.Thread(target=loop, args=(k,)) for k in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def decode_jobs(model: HookedModel, prompts: Any, steer_layer: int) -> dict[str, Callable[[], Any]]:
    logit = LogitLens(model)
    tuned = TunedLens(model)
    with torch.no_grad():
        tuned.weight.copy_(0.05 * torch.randn(tuned.weight.shape, generator=torch.Generator().manual_seed(0)))
    vector = torch.randn(model.d_model, generator=torch.Generator().manual_seed(1)) * 4

    def steered() -> Any:
        with model.apply(Steer(f"resid_post.{steer_layer}", vector)):
            return logit.decode(prompts, top_k=3, targets=[7])

    return {
        "logit": lambda: logit.decode(prompts, top_k=3, targets=[7]),
        "tuned": lambda: tuned.decode(prompts, top_k=3, positions="last"),
        "steered": steered,
    }


def test_threaded_lens_decoding_matches_sequential(llama_tiny: HookedModel) -> None:
    jobs = decode_jobs(llama_tiny, PROMPTS, 0)
    expected = {k: fn() for k, fn in jobs.items()}
    assert not same(expected["logit"][0], expected["steered"][0])  # the steering does change the decode
    got = run_threads(jobs, 8)
    for k, results in got.items():
        assert all(same(r[i], expected[k][i]) for r in results for i in range(len(PROMPTS))), k


@pytest.mark.slow
def test_threaded_text_decoding_on_smollm(smollm: HookedModel) -> None:
    """Real tokenizer, real model: tokenisation and decoding from three threads at once."""
    prompts = ["The capital of France is", "One, two, three,\n four"]
    jobs = decode_jobs(smollm, prompts, 10)
    expected = {k: fn() for k, fn in jobs.items()}
    got = run_threads(jobs, 3)
    for k, results in got.items():
        assert all(same(r[i], expected[k][i]) for r in results for i in range(len(prompts))), k
