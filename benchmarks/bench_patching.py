"""480 single-site ``resid_pre`` patches (30 layers x 16 positions) of one SmolLM2 prompt pair.

Compares, in one process and with one metric (logit(" Mary") - logit(" John") at the last position,
IOI-style pair), and checks the maps agree:

- ours: ``patching_sweep(..., "resid_pre.*")`` (batched, KV-prefix and lower-layer reuse, last-position unembed);
- raw PyTorch hooks, one full forward per patch (a forward pre-hook on the patched layer);
- nnsight 0.8, one ``trace`` per patch;
- nnsight 0.8, one ``trace`` with one ``invoke`` per patch (its tutorial's batched form);
- attribution patching: time, and correlation of its map with the exact one.

The machine is shared, so the one-forward-per-patch loops run on ``--loop-layers`` evenly spaced
layers x 16 positions and their per-patch cost is extrapolated to 480 (``--loop-layers 30`` runs them all);
the nnsight one-trace form runs all 480 invokes unless ``--trace-layers`` is smaller (then extrapolated).
nnsight is optional: without it those rows are skipped. Every baseline runs under ``torch.no_grad()``.

    PYTHONPATH=/path/to/nnsight .venv/bin/python benchmarks/bench_patching.py [--threads 1] [--loop-layers 3]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

CLEAN = "When Mary and John went to the store yesterday, John gave a cold drink to"
CORRUPT = "When Mary and John went to the store yesterday, Mary gave a cold drink to"


def spaced(n: int, k: int) -> list[int]:
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)}) if k < n else list(range(n))


def raw_hooks_loop(model, corrupt_ids, clean_resid, cells, metric) -> list[float]:
    out = []
    for layer, pos in cells:
        value = clean_resid[layer][:, pos]

        def hook(module, args, kwargs, value=value, pos=pos):
            hidden = (args[0] if args else kwargs["hidden_states"]).clone()
            hidden[:, pos] = value
            return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

        handle = model.layer_module(layer).register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                logits = model.hf_model(input_ids=corrupt_ids).logits
        finally:
            handle.remove()
        out.append(float(metric(logits[:, -1])[0]))
    return out


def nnsight_loop(lm, clean_resid, cells, metric) -> list[float]:
    out = []
    for layer, pos in cells:
        with torch.no_grad(), lm.trace(CORRUPT):
            lm.model.layers[layer].input[:, pos] = clean_resid[layer][:, pos]
            last = lm.lm_head.output[:, -1].save()
        out.append(float(metric(last)[0]))
    return out


def nnsight_one_trace(lm, clean_resid, cells, metric) -> list[float]:
    saved = []
    with torch.no_grad(), lm.trace() as tracer:
        for layer, pos in cells:
            with tracer.invoke(CORRUPT):
                lm.model.layers[layer].input[:, pos] = clean_resid[layer][:, pos]
                saved.append(lm.lm_head.output[:, -1].save())
    return [float(metric(s)[0]) for s in saved]


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--loop-layers", type=int, default=3, help="layers the per-patch loops run (x 16 positions)")
    ap.add_argument("--trace-layers", type=int, default=30, help="layers in nnsight's one-trace form")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from lmscope.interventions import Cache, HookedModel
    from lmscope.probes.patching import logit_diff, patching_sweep

    model = HookedModel.default()
    metric = logit_diff(model, " Mary", " John")
    ids = model.tokenize(CORRUPT).input_ids
    n_layers, n_pos = model.n_layers, ids.shape[1]
    assert n_pos == 16, n_pos
    patching_sweep(model, CLEAN, CORRUPT, "resid_pre.0", [0], metric)  # warm-up
    ours, t_ours = timed(lambda: patching_sweep(model, CLEAN, CORRUPT, "resid_pre.*", None, metric, progress=False))
    full = ours.values  # [30, 16]
    print(f"ours (exact sweep, 480 patches): {t_ours:.2f} s  ({1e3 * t_ours / 480:.1f} ms/patch)")
    rows = [("ours: patching_sweep", t_ours, 480, 0.0)]

    clean_cache = model.run(CLEAN, [Cache("resid_pre.*")]).cache
    clean_resid = {layer: clean_cache[f"resid_pre.{layer}"] for layer in range(n_layers)}
    loop_cells = [(layer, p) for layer in spaced(n_layers, args.loop_layers) for p in range(n_pos)]
    trace_cells = [(layer, p) for layer in spaced(n_layers, args.trace_layers) for p in range(n_pos)]

    def check(values, cells):
        ref = torch.tensor([float(full[layer, p]) for layer, p in cells])
        return float((torch.tensor(values) - ref).abs().max())

    vals, t = timed(raw_hooks_loop, model, ids, clean_resid, loop_cells, metric)
    rows.append(("raw hooks, 1 forward/patch", t, len(loop_cells), check(vals, loop_cells)))
    try:
        from nnsight import LanguageModel
    except ImportError:
        LanguageModel = None
        print("nnsight not importable: its rows are skipped")
    if LanguageModel is not None:
        lm = LanguageModel(model.hf_model, tokenizer=model.tokenizer)
        nnsight_loop(lm, clean_resid, loop_cells[:1], metric)  # warm-up
        vals, t = timed(nnsight_loop, lm, clean_resid, loop_cells, metric)
        rows.append(("nnsight 0.8, 1 trace/patch", t, len(loop_cells), check(vals, loop_cells)))
        vals, t = timed(nnsight_one_trace, lm, clean_resid, trace_cells, metric)
        rows.append(("nnsight 0.8, 1 trace, 1 invoke/patch", t, len(trace_cells), check(vals, trace_cells)))

    # the machine is shared: time our sweep again after the baselines and use the slower of the two runs
    again, t_again = timed(lambda: patching_sweep(model, CLEAN, CORRUPT, "resid_pre.*", None, metric, progress=False))
    print(f"ours again: {t_again:.2f} s (first run {t_ours:.2f} s); ratios use the slower")
    t_ours = max(t_ours, t_again)
    rows[0] = ("ours: patching_sweep (slower of 2 runs)", t_ours, 480, float((again.values - full).abs().max()))
    atp, t_atp = timed(lambda: patching_sweep(model, CLEAN, CORRUPT, "resid_pre.*", None, metric,
                                              method="attribution"))
    corr = float(np.corrcoef(atp.values.flatten().numpy(), full.flatten().numpy())[0, 1])
    large = int((atp.extras["relative_delta"] > 0.5).sum())

    print(f"\nSmolLM2-135M float32 CPU, {args.threads} thread(s); base metric {ours.base_metric:.3f}, "
          f"source {ours.source_metric:.3f}")
    print(f"{'method':40s} {'patches run':>11s} {'time (s)':>9s} {'ms/patch':>9s} {'480 (s, est.)':>13s} "
          f"{'vs ours':>8s} {'max |Δ| vs ours':>16s}")
    for name, t, n, diff in rows:
        per = t / n
        print(f"{name:40s} {n:11d} {t:9.2f} {1e3 * per:9.1f} {480 * per:13.1f} {480 * per / t_ours:7.1f}x "
              f"{diff:16.2e}")
    print(f"{'attribution patching (AtP)':40s} {480:11d} {t_atp:9.2f} {1e3 * t_atp / 480:9.2f} {t_atp:13.1f} "
          f"{t_atp / t_ours:7.2f}x  corr with exact map r={corr:.3f}; {large} cells with |Δ|/|resid| > 0.5")


if __name__ == "__main__":
    main()
