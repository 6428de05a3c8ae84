"""AtP vs AtP* (QK fix) against the exact sweep on SmolLM2-135M: correlation of each map with the exact one.

Pairs: the IOI-style pair of ``bench_patching.py`` (metric logit(" Mary") - logit(" John")) and one
binding pair (the queried entity swapped; metric logit(" Rome") - logit(" Paris")). Sites ``resid_pre.*``
and ``attn_out.*`` at every position; prints Pearson r with the exact map, mean |error|, and wall times.

    .venv/bin/python benchmarks/bench_atp_star.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

PAIRS = {
    "IOI": ("When Mary and John went to the store yesterday, John gave a cold drink to",
            "When Mary and John went to the store yesterday, Mary gave a cold drink to", " Mary", " John"),
    "binding": ("Anna lives in Paris. Tom lives in Rome. Tom lives in",
                "Anna lives in Paris. Tom lives in Rome. Anna lives in", " Rome", " Paris"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sites", nargs="+", default=["resid_pre.*", "attn_out.*"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from lmscope.interventions import HookedModel
    from lmscope.probes.patching import logit_diff, patching_sweep

    model = HookedModel.default()
    for name, (clean, corrupt, target, distractor) in PAIRS.items():
        metric = logit_diff(model, target, distractor)
        for sites in args.sites:
            res, times = {}, {}
            for method in ("exact", "attribution", "atp*"):
                t0 = time.perf_counter()
                res[method] = patching_sweep(model, clean, corrupt, sites, None, metric, method=method,
                                             progress=False).values.flatten().numpy()
                times[method] = time.perf_counter() - t0
            line = [f"{name:8s} {sites:12s} {res['exact'].size:4d} cells; exact {times['exact']:.1f} s"]
            for method in ("attribution", "atp*"):
                r = float(np.corrcoef(res[method], res["exact"])[0, 1])
                err = float(np.abs(res[method] - res["exact"]).mean())
                line.append(f"{method}: r={r:.3f}, mean |err| {err:.3f}, {times[method]:.1f} s")
            print("; ".join(line), flush=True)


if __name__ == "__main__":
    main()
