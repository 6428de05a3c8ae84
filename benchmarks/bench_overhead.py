"""Overhead of caching every layer's resid_post on SmolLM2 (or --model), as a ratio to a plain HF forward.

Run: python benchmarks/bench_overhead.py [--repeats 30] [--model gemma-3-270m]
     (with TransformerLens importable, e.g. .venv-tl/bin/python, its TransformerBridge is measured too)

Every configuration is timed in the same process on the same inputs, interleaved round-robin so machine
noise hits all of them alike (the order rotates each round); reported: median(time) / median(plain HF forward)
and the median over rounds of the paired ratio time / plain time of the same round.
Memory (--memory): each configuration runs in a fresh subprocess; its peak RSS (model included) is compared
with the plain forward's peak plus the bytes of the cached tensors, +10%; growth over the loaded model is shown too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from lmscope.interventions import Cache, HookedModel

sys.path.insert(0, str(Path(__file__).parent))
from memory import peak_mb  # noqa: E402

SHAPES = [(1, 16), (8, 128)]


def make_inputs(model: HookedModel, batch: int, seq: int):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 40000, (batch, seq), generator=gen)
    return model.tokenize(ids)


def load(name: str) -> HookedModel:
    """The benchmarked model: 'default' (SmolLM2) or any name HookedModel.from_pretrained accepts."""
    return HookedModel.default() if name == "default" else HookedModel.from_pretrained(name)


def runners(model: HookedModel, batch, is_default: bool = True) -> dict[str, Callable[[], object]]:
    hf = model.hf_model
    kw = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
              use_cache=False)
    sites = model.sites("resid_post.*")
    out: dict[str, Callable[[], object]] = {}

    def plain() -> object:
        with torch.no_grad():
            return hf(**kw).logits
    out["hf_plain"] = plain

    def hidden_states() -> object:  # HF's own way of keeping every layer's output: the cost of retention
        with torch.no_grad():
            return hf(**kw, output_hidden_states=True).hidden_states
    out["hf_hidden_states"] = hidden_states

    def ours() -> object:
        return model.run(batch, [Cache(sites)]).cache
    out["lmscope"] = ours

    def ours_nnsight() -> object:  # the same Cache through lmscope's nnsight backend
        return model.run(batch, [Cache(sites)], backend="nnsight").cache
    try:
        ours_nnsight()
        out["lmscope_nnsight"] = ours_nnsight
    except Exception as err:
        print(f"[lmscope nnsight backend skipped: {type(err).__name__}: {err}]", file=sys.stderr)

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
        if not is_default:
            raise RuntimeError("only measured on the default model")
        from transformer_lens.model_bridge import TransformerBridge

        from lmscope.interventions.defaults import default_model_dir

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


def time_all(fns: dict[str, Callable[[], object]], repeats: int,
             warmup: int = 3) -> tuple[dict[str, float], dict[str, float]]:
    """Median time of each function, and the median over rounds of its time / the plain forward's time
    in the same round (paired ratios cancel slow drifts of the machine). The order rotates each round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    paired = {k: statistics.median(a / b for a, b in zip(v, samples["hf_plain"])) for k, v in samples.items()}
    return medians, paired


def peak_rss_child(which: str, batch: int, seq: int, name: str = "default") -> None:
    """Child process: load the model, print the peak RSS growth of one configuration."""
    model = load(name)
    inputs = make_inputs(model, batch, seq)
    sites = model.sites("resid_post.*")

    def plain() -> object:
        with torch.no_grad():
            return model.hf_model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                                  position_ids=inputs.position_ids, use_cache=False).logits
    fn = plain if which == "hf_plain" else (lambda: model.run(inputs, [Cache(sites)]).cache)
    print(json.dumps(peak_mb(fn)))


def memory_report(batch: int, seq: int, d_model: int, n_layers: int,
                  name: str = "default") -> dict[str, dict[str, float]]:
    res = {}
    for which in ("hf_plain", "lmscope"):
        out = subprocess.run([sys.executable, __file__, "--model", name, "--child", which, str(batch), str(seq)],
                             capture_output=True, text=True, check=True)
        res[which] = json.loads(out.stdout.strip().splitlines()[-1])
    res["cached_tensors_mb"] = {"size": n_layers * batch * seq * d_model * 4 / 2**20}
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--shapes", nargs="*", default=None, help="shapes BATCHxSEQ (default 1x16 8x128)")
    p.add_argument("--only", nargs="*", default=None, help="subset of configurations (hf_plain always runs)")
    p.add_argument("--memory", action="store_true", help="also measure peak RSS in subprocesses")
    p.add_argument("--model", default="default", help="'default' (SmolLM2) or e.g. gemma-3-270m")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        peak_rss_child(args.child[0], int(args.child[1]), int(args.child[2]), args.model)
        return
    torch.manual_seed(0)
    model = load(args.model)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, model {model}")
    shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    for batch, seq in shapes:
        inputs = make_inputs(model, batch, seq)
        fns = runners(model, inputs, args.model == "default")
        if args.only:
            fns = {k: v for k, v in fns.items() if k in args.only or k == "hf_plain"}
        reps = args.repeats if batch * seq <= 64 else max(5, args.repeats // 3)
        med, paired = time_all(fns, reps)
        base = med["hf_plain"]
        print(f"\n{batch} x {seq} tokens  (median of {reps}, plain forward {base * 1e3:.2f} ms)")
        for name, t in med.items():
            print(f"  {name:18s} {t * 1e3:9.2f} ms   ratio of medians {t / base:.3f}   "
                  f"median paired ratio {paired[name]:.3f}")
        if args.memory:
            mem = memory_report(batch, seq, model.d_model, model.n_layers, args.model)
            plain, ours, cached = mem["hf_plain"], mem["lmscope"], mem["cached_tensors_mb"]["size"]
            budget = (plain["peak"] + cached) * 1.10
            print(f"  peak RSS: plain forward {plain['peak']:.0f} MB (+{plain['growth']:.0f} MB over the loaded "
                  f"model), lmscope {ours['peak']:.0f} MB (+{ours['growth']:.0f} MB), cached tensors "
                  f"{cached:.1f} MB; budget (plain + cache) x 1.1 = {budget:.0f} MB -> "
                  f"{'OK' if ours['peak'] <= budget else 'OVER'}; growth alone: "
                  f"{ours['growth']:.0f} vs (plain growth + cache) x 1.1 = {(plain['growth'] + cached) * 1.1:.0f} MB")

if __name__ == "__main__":
    main()
