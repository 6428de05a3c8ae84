"""Overhead of lmscope hooks on an accelerate-offloaded model: hooked vs plain forward, same offloaded model.

Loads SmolLM2 with its last ``--disk`` layers offloaded to disk (accelerate moves their weights in for each
forward), then times, round-robin in one process: the plain HF forward, and ``model.run`` caching every
``resid_post`` plus a ``Steer``. Prints medians and the paired ratio hooked / plain.

    python benchmarks/bench_offload.py --disk 10 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from lmscope.interventions import Cache, HookedModel, Steer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--disk", type=int, default=10, help="how many of the last layers go to disk")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as off:
        device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
        device_map.update({f"model.layers.{i}": "disk" if i >= 30 - args.disk else "cpu" for i in range(30)})
        model = HookedModel.from_pretrained("default", device_map=device_map, offload_folder=off)
        ids = torch.randint(100, 40000, (1, args.tokens))
        ivs = [Cache("resid_post.*"), Steer("resid_pre.5", torch.zeros(model.d_model))]

        def plain() -> None:
            with torch.no_grad():
                model.hf_model(input_ids=ids)

        def hooked() -> None:
            model.run(ids, ivs)

        plain(), hooked()  # warm-up
        times: dict[str, list[float]] = {"plain": [], "hooked": []}
        for _ in range(args.repeats):
            for name, fn in (("plain", plain), ("hooked", hooked)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    ratios = [h / p for h, p in zip(times["hooked"], times["plain"])]
    print(f"SmolLM2, {args.disk} of 30 layers on disk, 1 x {args.tokens} tokens, {args.repeats} rounds")
    for name, ts in times.items():
        print(f"  {name:7s} median {statistics.median(ts) * 1000:8.1f} ms")
    of_medians = statistics.median(times["hooked"]) / statistics.median(times["plain"])
    print(f"  hooked/plain: ratio of medians {of_medians:.3f}, median paired ratio {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
