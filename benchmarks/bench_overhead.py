"""Overhead of caching every layer's resid_post on SmolLM2, as a ratio to a plain HF forward.

Run: python benchmarks/bench_overhead.py [--repeats 30]
     (with TransformerLens importable, e.g. .venv-tl/bin/python, its TransformerBridge is measured too)

Every configuration is timed in the same process on the same inputs, interleaved round-robin so machine
noise hits all of them alike; the reported number is median(time) / median(plain HF forward).
Memory (--memory): each configuration runs in a fresh subprocess; peak RSS growth over the loaded model
is compared with the plain forward plus the bytes of the cached tensors.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch

from interventions import Cache, HookedModel

SHAPES = [(1, 16), (8, 128)]


def make_inputs(model: HookedModel, batch: int, seq: int):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (batch, seq), generator=gen)
    return model.tokenize(ids)


def runners(model: HookedModel, batch) -> dict[str, Callable[[], object]]:
    hf = model.hf_model
    kw = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
              use_cache=False)
    sites = model.sites("resid_post.*")
    out: dict[str, Callable[[], object]] = {}

    def plain() -> object:
        with torch.no_grad():
            return hf(**kw).logits
    out["hf_plain"] = plain

    def ours() -> object:
        return model.run(batch, [Cache(sites)]).cache
    out["lmscope"] = ours

    try:
        from nnsight import LanguageModel

        nn_model = LanguageModel(hf, tokenizer=model.tokenizer)
        layers = nn_model.model.layers

        def nnsight_run() -> object:
            saved: list = []  # nnsight re-executes the trace body; append to an outer list
            with torch.no_grad(), nn_model.trace(dict(input_ids=batch.input_ids,
                                                      attention_mask=batch.attention_mask)):
                for layer in layers:
                    saved.append(layer.output.save())
            return saved
        nnsight_run()
        out["nnsight"] = nnsight_run
    except Exception as err:  # not installed or API drift: report, don't fail
        print(f"[nnsight skipped: {type(err).__name__}: {err}]", file=sys.stderr)

    try:
        from transformer_lens.model_bridge import TransformerBridge

        from interventions.defaults import default_model_dir

        bridge = TransformerBridge.boot_transformers(str(default_model_dir()), hf_model=hf,
                                                     tokenizer=model.tokenizer)
        names = [f"blocks.{i}.hook_out" for i in range(model.n_layers)]

        def tl_run() -> object:
            with torch.no_grad():
                return bridge.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask,
                                             names_filter=lambda n: n in names)
        _, cache = tl_run()
        if len(cache) != model.n_layers:
            raise RuntimeError(f"TransformerBridge cached {len(cache)} hooks, expected {model.n_layers}")
        out["transformer_lens"] = tl_run
    except Exception as err:
        print(f"[TransformerLens skipped: {type(err).__name__}: {err}]", file=sys.stderr)
    return out


def time_all(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in samples.items()}


def peak_rss_child(which: str, batch: int, seq: int) -> None:
    """Child process: load, measure RSS, run one configuration twice, print the peak growth."""
    model = HookedModel.default()
    inputs = make_inputs(model, batch, seq)
    fn = runners(model, inputs)[which] if which != "lmscope" else (
        lambda: model.run(inputs, [Cache(model.sites("resid_post.*"))]).cache)
    fn()  # warm-up: allocator pools, lazy initialisation
    import gc

    gc.collect()
    before = _rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark (Linux)
        f.write("5")
    keep = fn()
    after = _rss_kb("VmHWM")
    del keep
    print(json.dumps({"peak_growth_kb": after - before}))


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_report(batch: int, seq: int, d_model: int, n_layers: int) -> dict[str, float]:
    res = {}
    for which in ("hf_plain", "lmscope"):
        out = subprocess.run([sys.executable, __file__, "--child", which, str(batch), str(seq)],
                             capture_output=True, text=True, check=True)
        res[which] = json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_kb"] / 1024
    cached_mb = n_layers * batch * seq * d_model * 4 / 2**20
    res["cached_tensors_mb"] = cached_mb
    res["budget_mb"] = (res["hf_plain"] + cached_mb) * 1.10
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--memory", action="store_true", help="also measure peak RSS in subprocesses")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        peak_rss_child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    torch.manual_seed(0)
    model = HookedModel.default()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, model {model}")
    for batch, seq in SHAPES:
        inputs = make_inputs(model, batch, seq)
        fns = runners(model, inputs)
        reps = args.repeats if batch * seq <= 64 else max(5, args.repeats // 3)
        med = time_all(fns, reps)
        base = med["hf_plain"]
        print(f"\n{batch} x {seq} tokens  (median of {reps}, plain forward {base * 1e3:.2f} ms)")
        for name, t in med.items():
            print(f"  {name:18s} {t * 1e3:9.2f} ms   ratio {t / base:.3f}")
        if args.memory:
            mem = memory_report(batch, seq, model.d_model, model.n_layers)
            print(f"  peak RSS growth: plain {mem['hf_plain']:.1f} MB, lmscope {mem['lmscope']:.1f} MB, "
                  f"cached tensors {mem['cached_tensors_mb']:.1f} MB, budget (plain + cache) x 1.1 = "
                  f"{mem['budget_mb']:.1f} MB -> {'OK' if mem['lmscope'] <= mem['budget_mb'] else 'OVER'}")


if __name__ == "__main__":
    main()
