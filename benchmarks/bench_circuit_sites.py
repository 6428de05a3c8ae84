"""Cost of caching the circuit-level sites ``mlp_post.*`` and ``attn_scores.*`` on SmolLM2 (or --model).

Run: python benchmarks/bench_circuit_sites.py [--repeats 20] [--batch 8] [--seq 128] [--model gemma-3-270m]

Configurations, timed in one process on the same inputs, interleaved round-robin (the order rotates each round)
so machine noise hits all alike:

- ``hf_plain``: the HF forward as loaded (SDPA);
- ``hf_eager``: the HF forward with eager attention (what any run touching ``attn_scores``/``attn_pattern`` uses);
- ``copy_mlp_post`` / ``copy_attn_scores``: the bare cost of the copy, i.e. cloning tensors of exactly the
  shapes those caches hold (the floor any way of keeping the values pays on top of a forward);
- ``cache_mlp_post`` / ``cache_attn_scores``: ``model.run(batch, [Cache("mlp_post.*")])`` and likewise.

Reported: each configuration's median time and the median over rounds of its paired ratio to ``hf_plain``
(and, for the two caches, to the plain forward plus the bare copy). Prints a JSON summary; records nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch

from lmscope.interventions import Cache, HookedModel


def load(name: str) -> HookedModel:
    return HookedModel.default() if name == "default" else HookedModel.from_pretrained(name)


def runners(model: HookedModel, batch_size: int, seq: int) -> dict[str, Callable[[], object]]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, min(model.d_vocab, 40000), (batch_size, seq), generator=gen)
    batch = model.tokenize(ids)
    hf, config = model.hf_model, model.hf_model.config
    kw = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
              use_cache=False)
    mlp_shape = (batch_size, seq, model.d_mlp)
    scores_shape = (batch_size, model.n_heads, seq, seq)
    mlp_src = [torch.randn(mlp_shape) for _ in range(model.n_layers)]
    scores_src = [torch.randn(scores_shape) for _ in range(model.n_layers)]

    def plain() -> object:
        with torch.no_grad():
            return hf(**kw).logits

    def eager() -> object:
        impl = config._attn_implementation_internal
        config._attn_implementation_internal = "eager"
        try:
            with torch.no_grad():
                return hf(**kw).logits
        finally:
            config._attn_implementation_internal = impl

    return {
        "hf_plain": plain,
        "hf_eager": eager,
        "copy_mlp_post": lambda: [t.clone() for t in mlp_src],
        "copy_attn_scores": lambda: [t.clone() for t in scores_src],
        "cache_mlp_post": lambda: model.run(batch, [Cache("mlp_post.*")]).cache,
        "cache_attn_scores": lambda: model.run(batch, [Cache("attn_scores.*")]).cache,
    }


def measure(run: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    names = list(run)
    for fn in run.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            run[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def summarise(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    plain = times["hf_plain"]
    out = {}
    for name, ts in times.items():
        row = {"median_s": statistics.median(ts),
               "ratio_to_plain": statistics.median(t / p for t, p in zip(ts, plain))}
        if name.startswith("cache_"):
            copy = times["copy_" + name[len("cache_"):]]
            row["ratio_to_plain_plus_copy"] = statistics.median(t / (p + c) for t, p, c in zip(ts, plain, copy))
        out[name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    model = load(args.model)
    result = summarise(measure(runners(model, args.batch, args.seq), args.repeats))
    print(json.dumps({"model": repr(model), "batch": args.batch, "seq": args.seq, "repeats": args.repeats,
                      "threads": torch.get_num_threads(), "results": result}, indent=2))


if __name__ == "__main__":
    main()
