"""Fast paths never change the shared model for other threads.

Each test runs one method's fast path (exact patching sweep, head sweep over a pair dataset, AtP/AtP*,
overthinking ablations, binding KV scoring, tuned-lens fitting, steered generation) in a worker thread while
the main thread runs plain ``model.run`` forwards on the same model, as ``lmscope serve`` workers do. Every
plain run must equal its reference bit for bit and nothing may raise; the fast path's own result must equal
the result it gives alone. Before partial forwards ran through private shells, the exact sweep swapped the
model's layer list for everyone (plain runs off by up to 30, or ``InputError: hidden has shape ...``) and the
overthinking ablation swapped its unembedding (``RuntimeError: The size of tensor a ...``).
"""

from __future__ import annotations

import random
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from tiny_models import build_tiny, random_ids

from lmscope.interventions import HookedModel, Steer

#: gemma3_text with a window longer than every prompt here, so its partial forwards are exact and used
ARCHS = ["llama", "gpt2", "gpt_neox", "gemma3_text"]
WIDE = {"gemma3_text": {"sliding_window": 48}}


def _same(a: Any, b: Any) -> bool:
    """Exact equality of nested results (tensors, dicts, lists, dataclass-like objects with ``__dict__``)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dict__") and not callable(a):
        return _same(vars(a), vars(b))
    return a == b or (a != a and b != b)  # NaN == NaN here


def hammer(model: HookedModel, fast: Callable[[], Any], *, repeats: int = 2, compare: bool = True) -> None:
    """Run ``fast`` ``repeats`` times in a worker while this thread runs plain forwards; assert isolation."""
    plain = [random_ids((9,), 11).tolist(), random_ids((4,), 12).tolist()]
    reference = model.run(plain).logits
    alone = fast() if compare else None
    errors: list[BaseException] = []
    results: list[Any] = []
    done = threading.Event()

    def worker() -> None:
        try:
            for _ in range(repeats):
                results.append(fast())
        except BaseException as err:  # surfaced below
            errors.append(err)
        finally:
            done.set()

    thread = threading.Thread(target=worker)
    runs, wrong, worst = 0, 0, 0.0
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: a window in which the model is changed shows up at once
    thread.start()
    try:
        while not done.is_set() or runs < 3:
            got = model.run(plain).logits
            runs += 1
            if not torch.equal(got, reference):
                wrong += 1
                worst = max(worst, float((got - reference).abs().max()) if got.shape == reference.shape else
                            float("inf"))
    finally:
        thread.join()
        sys.setswitchinterval(interval)
    if errors:
        raise errors[0]
    assert wrong == 0, f"{wrong} of {runs} plain runs differed from their reference (max |diff| {worst:.3g})"
    if compare:
        for result in results:
            assert _same(result, alone), "the fast path gave another result under concurrency than alone"


def _pairs() -> tuple[list[list[int]], list[list[int]]]:
    clean = [random_ids((6,), s) for s in (1, 2)]
    corrupt = [c.clone() for c in clean]
    for c in corrupt:
        c[1] = (c[1] + 5) % 97
        c[3] = (c[3] + 11) % 97
    return [c.tolist() for c in clean], [c.tolist() for c in corrupt]


def _metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, 5] - logits[:, 7]


@pytest.fixture(params=ARCHS)
def model(request: pytest.FixtureRequest, one_thread: None) -> HookedModel:
    return HookedModel(build_tiny(request.param, **WIDE.get(request.param, {})))


def test_exact_patching_sweep(model: HookedModel) -> None:
    from lmscope.probes.patching import resid_pre_sweep

    (clean, *_), (corrupt, *_) = _pairs()
    hammer(model, lambda: resid_pre_sweep(model, clean, corrupt, _metric, layer_block=1).values)  # starts above 0


def test_head_sweep_over_a_pair_dataset(model: HookedModel) -> None:
    from lmscope.probes.patching import head_sweep

    clean, corrupt = _pairs()
    hammer(model, lambda: head_sweep(model, clean, corrupt, _metric, layer_block=1).values)


@pytest.mark.parametrize("method", ["attribution", "atp*"])
def test_attribution_patching(model: HookedModel, method: str) -> None:
    from lmscope.probes.patching import patching_sweep

    clean, corrupt = _pairs()
    hammer(model, lambda: patching_sweep(model, clean, corrupt, ["resid_pre.*", "head_z.*"], None, _metric,
                                         method=method).values)


def test_overthinking_ablations(model: HookedModel) -> None:
    from toys import ToyTokenizer, toy_task

    from lmscope.probes.overthinking import final_label_probs, random_head_sets
    from lmscope.probes.overthinking.tasks import build_prompts

    toy = HookedModel(model.hf_model, ToyTokenizer())  # a second wrapper over the same shared modules
    prompts = build_prompts(toy, toy_task(), "permuted", n_prompts=3, n_demos=4, seed=3)
    configs: dict[str, Any] = {"none": ((), "zero"), "top": ([(1, 2), (2, 0)], "zero"),
                               "qkv": ([(2, 1)], "qkv"), "mean": ([(0, 3), (2, 2)], "mean")}
    configs.update({f"r{i}": (d, "zero") for i, d in enumerate(random_head_sets(3, 4, 2, 3, seed=1))})
    hammer(model, lambda: final_label_probs(toy, prompts, configs, batch_size=3, progress=False, config_chunk=3))


def test_binding_kv_scoring(model: HookedModel) -> None:
    from toys import FakeTokenizer, binding_task

    from lmscope.interventions import Ablate
    from lmscope.probes.binding.prompts import build_prompt, sample_contexts
    from lmscope.probes.binding.runs import score_many

    task = binding_task(multi_token=True)
    fake = HookedModel(model.hf_model, FakeTokenizer())
    contexts = sample_contexts(fake.tokenizer, task, 3, split="test", seed=0, spare_entity=True)
    prompts = [build_prompt(fake.tokenizer, task, c, q) for c in contexts for q in (0, 1)]
    vector = torch.ones(fake.d_model)
    makes: dict[str, Any] = {"none": None,
                             "steer": lambda rows, frozen: [Steer("resid_pre.1", vector, 0.5, positions=[2])],
                             "ablate": lambda rows, frozen: [Ablate("head_z.1", heads=[0], positions=[3])]}
    hammer(model, lambda: score_many(fake, prompts, makes, method="kv", batch_size=3, progress=False))


def test_tuned_lens_fitting(model: HookedModel, tmp_path: Path) -> None:
    from lmscope.lens.training.corpus import Corpus
    from lmscope.lens.training.fit import train_tuned_lens

    rng = random.Random(0)
    words = "the cat sat on a mat and then it ran to the old house where seven dogs live".split()
    for i in range(3):
        (tmp_path / f"doc{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(300)))
    corpus = Corpus.from_sources(tmp_path, heldout_fraction=0.2)

    def fit() -> Any:
        torch.manual_seed(0)
        lens = train_tuned_lens(model, corpus.train(), steps=1, seq_len=16, tokens_per_step=32, init_tokens=64,
                                progress=False)
        return [p.detach().clone() for p in lens.parameters()]

    hammer(model, fit, repeats=1)


def test_steered_generation(model: HookedModel) -> None:
    steer = Steer("resid_pre.1", torch.ones(model.d_model), 2.0, positions="all")
    prompt = random_ids((5,), 3).tolist()
    hammer(model, lambda: model.generate([prompt], max_new_tokens=4, interventions=[steer]).tokens)


@pytest.mark.slow
def test_smollm2_fast_paths_leave_other_threads_alone(smollm: HookedModel) -> None:
    """The real model: the exact sweep starting above layer 0, the overthinking ablation (label-only head,
    column layout) and binding KV scoring, each beside plain runs in another thread."""
    from lmscope.probes.binding import load_task as binding_task
    from lmscope.probes.binding.prompts import build_prompt, sample_contexts
    from lmscope.probes.binding.runs import score_many
    from lmscope.probes.overthinking import final_label_probs
    from lmscope.probes.overthinking.tasks import build_prompts
    from lmscope.probes.patching import logit_diff, resid_pre_sweep

    clean = "When Mary and John went out, John gave a drink to"
    corrupt = "When Mary and John went out, Mary gave a drink to"
    metric = logit_diff(smollm, " Mary", " John")
    hammer(smollm, lambda: resid_pre_sweep(smollm, clean, corrupt, metric, layers=[8, 20], layer_block=1).values,
           repeats=1)
    prompts = build_prompts(smollm, "category", "permuted", n_prompts=2, n_demos=3, seed=0)
    configs: dict[str, Any] = {"none": ((), "zero"), "late": ([(20, 1), (25, 3)], "zero"), "qkv": ([(12, 0)], "qkv")}
    hammer(smollm, lambda: final_label_probs(smollm, prompts, configs, batch_size=2, progress=False), repeats=1)
    task = binding_task("capitals")
    contexts = sample_contexts(smollm.tokenizer, task, 2, split="test", seed=0)
    bprompts = [build_prompt(smollm.tokenizer, task, c, 0) for c in contexts]
    makes: dict[str, Any] = {"none": None,
                             "steer": lambda rows, frozen: [Steer("resid_pre.6", torch.ones(smollm.d_model), 2.0,
                                                                  positions=[3])]}
    hammer(smollm, lambda: score_many(smollm, bprompts, makes, method="kv", progress=False), repeats=1)
