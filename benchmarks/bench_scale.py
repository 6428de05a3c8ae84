"""lmscope at scale: LLaMA-shaped ~1B / ~7B models with random bfloat16 weights (no download).

The model is built on the meta device (no memory, no init) and materialised in bfloat16 with random weights,
since timing and memory do not depend on weight values. Each measurement is printed next to a baseline
measured in the same run, on the same inputs:

- **hook overhead**: a forward caching every ``resid_post`` vs the plain HF forward (median paired ratio,
  round-robin as in ``bench_overhead.py``; target <= 1.02);
- **exact patching sweep**: cells/s of ``method="exact"`` vs the one-forward-per-cell ``Patch`` loop, on
  ``resid_pre`` at ``--patch-layers`` layers x ``--patch-positions`` positions, and the largest |exact - loop|;
- **tuned-lens training**: tokens/s of the closed-form fit and of one KL fine-tune step, vs plain forward tokens/s;
- **activation collection**: ``write_dataset`` of every ``resid_post`` (all tokens, bfloat16) in GB/s written,
  vs the forward alone;
- **peak memory**: of the caching forward vs the plain forward plus the analytic size of what is cached
  (target: within +10%). CPU: peak RSS (``memory.py``); CUDA: ``torch.cuda.max_memory_allocated``.

Run:  python benchmarks/bench_scale.py                       # CPU default: 1b at 1x256
      python benchmarks/bench_scale.py --device cuda --config 7b --shape 8x2048
      python benchmarks/bench_scale.py --config tiny          # seconds; what the test suite runs

Cost of the CPU default (1b, 1x256): the bfloat16 weights take 2.5 GB, the lens statistics ~1.1 GB and the lens
~0.3 GB; peak RSS stays well under 24 GiB. About 28 forwards of 256 tokens in all (``--repeats 3``, ~0.63 TFLOP
each: ~9 s at the 73 GFLOP/s a bfloat16 matmul reached on 2 busy cores here) plus the KL step, which projects
16 readings x 256 tokens onto the 128k vocabulary forwards and backwards in float32 (~1-2 min): ~6 min in all
(estimated, not run); ``--only`` skips measurements.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from lmscope.interventions import Cache, HookedModel

sys.path.insert(0, str(Path(__file__).parent))
from memory import peak_mb  # noqa: E402

#: LLaMA-shaped configurations: ``1b`` is Llama 3.2 1B's shape (1.24B parameters, tied embeddings), ``7b`` is
#: Llama 2 7B's (6.74B); ``tiny`` runs in seconds (the suite's smoke test).
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True, rope_theta=500000.0),
    "7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False, rope_theta=10000.0),
}
DEFAULT_SHAPE = {"cpu": "1x256", "cuda": "8x2048"}


@dataclass
class Timer:
    """Wall-clock timing with CUDA synchronisation around the call when the model lives on a GPU."""

    device: torch.device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn: Callable[[], object]) -> float:
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t


def build(config: str, device: str, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> HookedModel:
    """A LLaMA of shape ``config`` built on the meta device, then materialised on ``device`` in ``dtype``."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(**CONFIGS[config], max_position_embeddings=4096, rms_norm_eps=1e-5)
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    hf = hf.to_empty(device=device)
    hf.tie_weights()  # to_empty gives each module its own storage: re-tie the embeddings where the config ties them
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 1:  # norm weights
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
        # non-persistent buffers (the rotary inverse frequencies) are garbage after to_empty: rebuild them
        rotary = hf.model.rotary_emb
        hf.model.rotary_emb = type(rotary)(cfg).to(device)
    hf.generation_config.eos_token_id = None
    return HookedModel(hf.eval())


def n_params(model: HookedModel) -> int:
    return sum(p.numel() for p in model.hf_model.parameters())


def time_round_robin(fns: dict[str, Callable[[], object]], repeats: int, timer: Timer,
                     warmup: int = 1) -> tuple[dict[str, float], dict[str, float]]:
    """Median time of each function and its median paired ratio to the first one (``bench_overhead.py``'s way:
    every configuration in each round, the order rotating, so machine noise hits all alike)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names, base = list(fns), next(iter(fns))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(timer(fns[name]))
    medians = {k: statistics.median(v) for k, v in samples.items()}
    paired = {k: statistics.median(a / b for a, b in zip(v, samples[base])) for k, v in samples.items()}
    return medians, paired


def random_ids(model: HookedModel, batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, model.d_vocab, (batch, seq), generator=gen).to(model.device)


def plain_forward(model: HookedModel, ids: torch.Tensor) -> Callable[[], object]:
    def plain() -> object:
        with torch.no_grad():
            return model.hf_model(input_ids=ids, use_cache=False).logits
    return plain


# -- the measurements ---------------------------------------------------------------------------------------------

def hook_overhead(model: HookedModel, ids: torch.Tensor, repeats: int, timer: Timer) -> dict[str, float]:
    sites = model.sites("resid_post.*")
    fns = {"plain": plain_forward(model, ids), "cache_resid_post": lambda: model.run(ids, [Cache(sites)]).cache}
    med, paired = time_round_robin(fns, repeats, timer)
    return {"plain_s": med["plain"], "cached_s": med["cache_resid_post"], "ratio": paired["cache_resid_post"]}


def patching(model: HookedModel, ids: torch.Tensor, layers: int, positions: int, timer: Timer) -> dict[str, float]:
    from lmscope.probes.patching import patching_sweep

    clean = ids[0]
    corrupt = clean.clone()
    seq = clean.shape[0]
    cols = sorted({int(round(x)) for x in torch.linspace(0, seq - 1, positions).tolist()})
    corrupt[cols] = (corrupt[cols] + 1) % model.d_vocab
    rows = sorted({int(round(x)) for x in torch.linspace(0, model.n_layers - 1, layers).tolist()})
    sites = [f"resid_pre.{i}" for i in rows]

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 1] - logits[:, 2]

    results: dict[str, Any] = {}

    def sweep(method: str) -> None:
        results[method] = patching_sweep(model, clean, corrupt, sites, cols, metric, method=method, progress=False)

    for method in ("loop", "exact"):
        results[f"{method}_s"] = timer(functools.partial(sweep, method))
    cells = results["exact"].values.numel()
    err = float((results["exact"].values - results["loop"].values).abs().max())
    return {"cells": cells, "loop_cells_per_s": cells / results["loop_s"],
            "exact_cells_per_s": cells / results["exact_s"], "speedup": results["loop_s"] / results["exact_s"],
            "max_abs_exact_minus_loop": err}


def lens_training(model: HookedModel, batch: int, seq: int, plain_s: float, folder: Path) -> dict[str, float]:
    """Closed-form fit on ``batch x seq`` tokens, then one KL step of ``batch x seq`` tokens (byte tokenizer)."""
    from lmscope.lens.training.fit import train_tuned_lens

    docs = folder / "corpus"
    docs.mkdir()
    words = "the of and a to in is was that for on with as by at from it his an were are which be this".split()
    gen = torch.Generator().manual_seed(0)
    n_words = 3 * batch * seq // 4 + 64  # a byte tokenizer: ~4 bytes a word, enough text for both phases
    picks = torch.randint(0, len(words), (2 * n_words,), generator=gen).tolist()
    (docs / "text.txt").write_text(" ".join(words[i] for i in picks))
    tokens = batch * seq
    lens = train_tuned_lens(model, docs, steps=1, tokens_per_step=tokens, seq_len=seq, init_tokens=tokens,
                            progress=False)
    meta = lens.meta["training"]
    plain_tps = tokens / plain_s
    return {"init_tokens_per_s": tokens / meta["init_s"], "kl_tokens_per_s": tokens / meta["finetune_s"],
            "plain_forward_tokens_per_s": plain_tps, "init_vs_forward": (tokens / meta["init_s"]) / plain_tps,
            "kl_vs_forward": (tokens / meta["finetune_s"]) / plain_tps}


def collection(model: HookedModel, ids: torch.Tensor, plain_s: float, folder: Path, timer: Timer) -> dict[str, float]:
    from lmscope.interventions import write_dataset

    prompts = [row.tolist() for row in ids]
    sites = model.sites("resid_post.*")
    seconds = timer(lambda: write_dataset(model, folder / "acts", prompts, sites, positions="all", dtype="bfloat16",
                                          batch_size=len(prompts), progress=False))
    written = sum(f.stat().st_size for f in (folder / "acts").rglob("*") if f.is_file())
    return {"seconds": seconds, "gb": written / 1e9, "gb_per_s": written / 1e9 / seconds,
            "vs_plain_forward": seconds / plain_s}


def memory(model: HookedModel, ids: torch.Tensor) -> dict[str, float]:
    """Peak memory (MiB) of the plain and the caching forward; the analytic size of the cached tensors."""
    sites = model.sites("resid_post.*")
    itemsize = torch.finfo(model.dtype).bits // 8
    cached_mb = len(sites) * ids.numel() * model.d_model * itemsize / 2**20
    plain = plain_forward(model, ids)

    def cached() -> object:
        return model.run(ids, [Cache(sites)]).cache

    if model.device.type == "cuda":
        def peak(fn: Callable[[], object]) -> dict[str, float]:
            fn()
            gc.collect()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            keep = fn()
            torch.cuda.synchronize()
            out = torch.cuda.max_memory_allocated()
            del keep
            return {"peak": out / 2**20, "growth": (out - before) / 2**20}
    else:
        peak = peak_mb
    p, c = peak(plain), peak(cached)
    budget = (p["peak"] + cached_mb) * 1.10
    return {"plain_peak_mb": p["peak"], "cached_peak_mb": c["peak"], "cached_tensors_mb": cached_mb,
            "budget_mb": budget, "within_budget": float(c["peak"] <= budget),
            "growth_over_plain_plus_cache": (c["peak"] - p["peak"]) / max(cached_mb, 1e-9)}


def run(config: str, shape: str, device: str, repeats: int, patch_layers: int, patch_positions: int,
        only: list[str] | None = None) -> dict[str, Any]:
    batch, seq = (int(n) for n in shape.lower().split("x"))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build(config, device)
    timer = Timer(model.device)
    report: dict[str, Any] = {"config": config, "shape": [batch, seq], "device": str(model.device),
                              "dtype": str(model.dtype), "params": n_params(model),
                              "build_s": time.perf_counter() - t0, "threads": torch.get_num_threads()}
    ids = random_ids(model, batch, seq)
    want = (lambda name: only is None or name in only)
    report["overhead"] = hook_overhead(model, ids, repeats, timer)
    plain_s = report["overhead"]["plain_s"]
    with tempfile.TemporaryDirectory() as tmp:
        if want("patching"):
            report["patching"] = patching(model, ids, patch_layers, patch_positions, timer)
        if want("lens"):
            report["lens"] = lens_training(model, batch, seq, plain_s, Path(tmp))
        if want("collection"):
            report["collection"] = collection(model, ids, plain_s, Path(tmp), timer)
    if want("memory"):
        report["memory"] = memory(model, ids)
    return report


def show(r: dict[str, Any]) -> None:
    b, t = r["shape"]
    print(f"{r['config']}: {r['params'] / 1e9:.2f}B parameters, {r['dtype']} on {r['device']} "
          f"({r['threads']} threads), {b} x {t} tokens; built in {r['build_s']:.1f} s")
    o = r["overhead"]
    print(f"  hook overhead   plain {o['plain_s'] * 1e3:.1f} ms, caching every resid_post {o['cached_s'] * 1e3:.1f} ms:"
          f" ratio {o['ratio']:.3f} (target <= 1.02) -> {'OK' if o['ratio'] <= 1.02 else 'OVER'}")
    if "patching" in r:
        p = r["patching"]
        print(f"  patching        {p['cells']} cells: exact {p['exact_cells_per_s']:.2f} cells/s, Patch loop "
              f"{p['loop_cells_per_s']:.2f} cells/s: {p['speedup']:.2f}x; max |exact - loop| "
              f"{p['max_abs_exact_minus_loop']:.3g}")
    if "lens" in r:
        le = r["lens"]
        print(f"  tuned lens      closed-form fit {le['init_tokens_per_s']:.1f} tok/s ({le['init_vs_forward']:.2f}x "
              f"plain forward tok/s), KL step {le['kl_tokens_per_s']:.1f} tok/s ({le['kl_vs_forward']:.2f}x); "
              f"plain forward {le['plain_forward_tokens_per_s']:.1f} tok/s")
    if "collection" in r:
        c = r["collection"]
        print(f"  collection      {c['gb']:.3f} GB to disk in {c['seconds']:.2f} s: {c['gb_per_s']:.3f} GB/s "
              f"({c['vs_plain_forward']:.2f}x the plain forward's time)")
    if "memory" in r:
        m = r["memory"]
        print(f"  peak memory     plain {m['plain_peak_mb']:.0f} MiB, caching {m['cached_peak_mb']:.0f} MiB, cached "
              f"tensors {m['cached_tensors_mb']:.1f} MiB; budget (plain + cache) x 1.1 = {m['budget_mb']:.0f} MiB -> "
              f"{'OK' if m['within_budget'] else 'OVER'}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="1b")
    p.add_argument("--tiny", action="store_true", help="shorthand for --config tiny --shape 2x16 --repeats 2")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--shape", default=None, help="BATCHxSEQ (default 1x256 on CPU, 8x2048 on CUDA)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds of the overhead (default 3 CPU, 20 CUDA)")
    p.add_argument("--patch-layers", type=int, default=4, help="resid_pre layers the patching sweep covers")
    p.add_argument("--patch-positions", type=int, default=2, help="token positions the patching sweep covers")
    p.add_argument("--only", nargs="*", choices=["patching", "lens", "collection", "memory"], default=None,
                   help="a subset of the measurements (the overhead always runs: it is the baseline)")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    args = p.parse_args(argv)
    if args.tiny:
        args.config, args.shape, args.repeats = "tiny", args.shape or "2x16", args.repeats or 2
    device = torch.device(args.device).type
    shape = args.shape or DEFAULT_SHAPE.get(device, "1x256")
    repeats = args.repeats or (20 if device == "cuda" else 3)
    report = run(args.config, shape, args.device, repeats, args.patch_layers, args.patch_positions, args.only)
    show(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    assert all(math.isfinite(v) for v in report["overhead"].values())
    return report


if __name__ == "__main__":
    main()
