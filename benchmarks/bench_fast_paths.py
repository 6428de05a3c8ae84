"""Do the thread-safe fast paths keep their speed? Before/after in one process, on a real model.

"Before" is the previous partial forward, rebuilt here as the baseline: it swapped the shared model's layer list,
``config.layer_types`` and unembedding for the duration and fed the start layer through a hook every thread saw
(fast, but another thread's forward could run in that window and get wrong logits). "After" is
:func:`lmscope.interventions.partial.partial_model`: a private shell over the same modules plus a context-local
hook, the shared model untouched. Each workload runs both ways, alternately, ``--repeats`` times (best time
kept), with identical results checked:

- ``sweep``: the exact ``resid_pre`` patching sweep of one IOI pair (every layer x position, ``layer_block=1`` so
  every block starts above layer 0);
- ``heads``: the exact head sweep over ``--pairs`` IOI pairs;
- ``ablation``: the overthinking ablation phase (column layout, label-only unembedding), ``--prompts`` prompts x
  64 configurations of 10 heads.

    .venv/bin/python benchmarks/bench_fast_paths.py [--model default|gemma-3-270m] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn


@contextmanager
def swapping_partial_model(model: Any, start: int = 0, hidden: torch.Tensor | None = None, *,
                           unembed: nn.Module | None = None) -> Iterator[nn.Module]:
    """The previous implementation (baseline only): mutate the shared model for the duration."""
    from lmscope.interventions.architectures import get_module

    hf = model.hf_model
    parent_path, attr = model.arch.layers.rsplit(".", 1)
    parent = get_module(hf, parent_path)
    layers = getattr(parent, attr)
    types = getattr(hf.config, "layer_types", None)
    head_path = model.arch.unembed.split("|")[0] if unembed is None else next(
        p for p in model.arch.unembed.split("|") if hasattr(hf, p))
    old_head = getattr(hf, head_path)
    handle = None
    try:
        if start:
            setattr(parent, attr, nn.ModuleList(list(layers)[start:]))
            if isinstance(types, (list, tuple)):
                hf.config.layer_types = list(types)[start:]
        if unembed is not None:
            setattr(hf, head_path, unembed)
        if hidden is not None:
            def feed(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                new = hidden.to(dtype=(args[0] if args else kwargs["hidden_states"]).dtype)
                return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})
            handle = layers[start].register_forward_pre_hook(feed, with_kwargs=True, prepend=True)
        yield hf
    finally:
        if handle is not None:
            handle.remove()
        setattr(parent, attr, layers)
        if isinstance(types, (list, tuple)):
            hf.config.layer_types = types
        setattr(hf, head_path, old_head)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def same(a: Any, b: Any) -> float:
    """Max |a - b| over tensors (nested dicts allowed)."""
    if isinstance(a, dict):
        return max(same(a[k], b[k]) for k in a)
    return float((a - b).abs().max())


def workloads(model: Any, args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    from lmscope.probes.circuits.tasks import ioi_pairs
    from lmscope.probes.overthinking import build_prompts, final_label_probs, random_head_sets
    from lmscope.probes.patching import head_sweep, resid_pre_sweep

    task = ioi_pairs(model, args.pairs)
    ps = build_prompts(model, "category", "permuted", n_prompts=args.prompts, n_demos=12)
    draws = random_head_sets(model.n_layers, model.n_heads, 10, 21, seed=0)
    configs: dict[str, Any] = {"none": ((), "zero")}
    for method in ("zero", "mean", "qkv"):
        configs.update({f"{method}/{i}": (d, method) for i, d in enumerate(draws)})
    return {
        "sweep": lambda: resid_pre_sweep(model, task.clean[0], task.corrupt[0], task.metrics[0], layer_block=1,
                                         progress=False).values,
        "heads": lambda: head_sweep(model, task.clean, task.corrupt, task.metrics, progress=False).values,
        "ablation": lambda: final_label_probs(model, ps, configs, batch_size=8, progress=False),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import lmscope.interventions.partial as partial
    import lmscope.probes.overthinking.final_token as final_token
    from lmscope.interventions import HookedModel

    print(f"load average before: {os.getloadavg()}", flush=True)
    model = HookedModel.default() if args.model == "default" else HookedModel.from_pretrained(args.model)
    new = partial.partial_model
    for name, fn in workloads(model, args).items():
        fn()  # warm-up
        results, times = {}, {}
        for _ in range(args.repeats):
            for label, impl in (("before", swapping_partial_model), ("after", new)):
                partial.partial_model = final_token.partial_model = impl  # type: ignore[assignment]
                try:
                    results[label], t = timed(fn)
                finally:
                    partial.partial_model = final_token.partial_model = new  # type: ignore[assignment]
                times[label] = min(times.get(label, float("inf")), t)
        diff = same(results["after"], results["before"])
        print(f"{name:9s} before (shared-model swap) {times['before']:.2f} s, after (private shell) "
              f"{times['after']:.2f} s: after/before {times['after'] / times['before']:.2f}; max |difference| "
              f"{diff:.1e}", flush=True)
        if diff != 0.0:  # the private shell must give the swap's numbers bit for bit
            raise SystemExit(f"{name}: the fast path's results differ from the baseline's by {diff:.1e}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
