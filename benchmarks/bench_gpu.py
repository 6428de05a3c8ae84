"""Hook overhead on a GPU: caching every layer's resid_post on a SmolLM2-shaped model, vs a plain HF forward.

The GPU machine cannot receive SmolLM2's weights (they do not fit the transfer limit), and timing does not
depend on weight values, so this builds ``LlamaForCausalLM`` with SmolLM2-135M's exact configuration and random
weights. Every configuration is timed in the same process, round-robin, with CUDA synchronisation around each
call; it prints the median time and the median paired ratio to the plain forward of the same round.

    python benchmarks/bench_gpu.py --device cuda --repeats 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from lmscope.interventions import Cache, HookedModel

#: SmolLM2-135M-Instruct's configuration (LLaMA, 30 layers, d_model 576, 9 heads / 3 KV heads).
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
               rms_norm_eps=1e-5, tie_word_embeddings=True)


def build(device: str, dtype: torch.dtype) -> HookedModel:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(LlamaConfig(**SMOLLM2), dtype=dtype).to(device).eval()
    return HookedModel(hf)


def timed(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--shapes", nargs="*", default=["1x16", "8x128", "32x512"])
    args = ap.parse_args()
    model = build(args.device, getattr(torch, args.dtype))
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"torch {torch.__version__}, {name}, SmolLM2-shaped random weights, {args.dtype}")
    sites = model.sites("resid_post.*")
    for shape in args.shapes:
        b, t = (int(x) for x in shape.split("x"))
        batch = model.tokenize(torch.randint(100, 40000, (b, t), generator=torch.Generator().manual_seed(0)))
        kw = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                  use_cache=False)

        def plain(kw: dict = kw) -> object:
            with torch.no_grad():
                return model.hf_model(**kw).logits

        def cached(batch: object = batch) -> object:
            return model.run(batch, [Cache(sites)]).cache

        fns: dict[str, Callable[[], object]] = {"hf_plain": plain, "lmscope_cache_all": cached}
        for fn in fns.values():  # warm-up (CUDA kernels, allocator)
            for _ in range(3):
                timed(fn, args.device)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.repeats):
            for k, fn in fns.items():
                times[k].append(timed(fn, args.device))
        base = statistics.median(times["hf_plain"])
        print(f"\n{b} x {t} tokens (median of {args.repeats}; plain {base * 1e3:.2f} ms)")
        for k, ts in times.items():
            paired = statistics.median(x / y for x, y in zip(ts, times["hf_plain"]))
            print(f"  {k:20s} {statistics.median(ts) * 1e3:9.2f} ms  ratio of medians "
                  f"{statistics.median(ts) / base:.3f}  median paired ratio {paired:.3f}")


if __name__ == "__main__":
    main()
