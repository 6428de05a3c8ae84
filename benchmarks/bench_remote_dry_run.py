"""Cost of the NDIF request path without a network.

Times one SmolLM2 forward (``Steer`` + ``Cache("resid_post.*")``) through the hooks backend, the nnsight backend,
and nnsight's ``remote="local"`` dry run of the NDIF request (serialised exactly as for NDIF, rebuilt with
lmscope hidden as on a server, run here), round-robin in one process; prints the medians in milliseconds.

    .venv/bin/python benchmarks/bench_remote_dry_run.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lmscope.interventions import Cache, HookedModel, Steer

#: (label, backend, remote)
RUNS = (("hooks", "hooks", False), ("nnsight", "nnsight", False), ("remote dry run", "nnsight", "local"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    model = HookedModel.default()
    model.hf_model.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the hub id NDIF would run
    interventions = [Steer("resid_pre.10", torch.ones(model.d_model), positions=-1), Cache("resid_post.*")]
    prompts = ["The capital of France is"]
    for _, backend, remote in RUNS:  # warm-up (the first remote run builds nnsight's wrapper)
        model.run(prompts, interventions, backend=backend, remote=remote)
    times: dict[str, list[float]] = {label: [] for label, _, _ in RUNS}
    for _ in range(args.repeats):
        for label, backend, remote in RUNS:
            start = time.perf_counter()
            model.run(prompts, interventions, backend=backend, remote=remote)
            times[label].append(time.perf_counter() - start)
    for label, values in times.items():
        print(f"{label:>15}: {statistics.median(values) * 1000:7.1f} ms (median of {args.repeats})")


if __name__ == "__main__":
    main()
