"""The edge-level circuit study at full size on a real model, saved for the circuits notebook and RESULTS.

Runs :func:`lmscope.probes.circuits.circuit_study` (EAP, EAP-IG, exact edge patching on sampled edges, the
faithfulness curve against random circuits, exact head patching for the node-level comparison) on ``--pairs``
pairs of one task and writes ``benchmarks/results/circuits_<model>_<task>/`` (report.json + the EAP-IG scores).
Prints the headline numbers, wall time, peak RSS and the load average before and after.

    .venv/bin/python benchmarks/bench_circuit_study.py --model smollm2 --task ioi [--pairs 24] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from memory import rss_kb  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", choices=["smollm2", "gemma-3-270m"])
    p.add_argument("--task", default="ioi", choices=["ioi", "capitals"])
    p.add_argument("--pairs", type=int, default=24)
    p.add_argument("--n-exact", type=int, default=200)
    p.add_argument("--n-random", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from lmscope.interventions import HookedModel
    from lmscope.probes.circuits import capital_pairs, circuit_study, ioi_pairs

    print(f"load average before: {os.getloadavg()}", flush=True)
    dtype = getattr(torch, args.dtype)
    model = HookedModel.default(dtype=dtype) if args.model == "smollm2" else \
        HookedModel.from_pretrained(args.model, dtype=dtype)
    task = (ioi_pairs if args.task == "ioi" else capital_pairs)(model, args.pairs)
    t0 = time.perf_counter()
    study = circuit_study(model, task, model_name=args.model, n_exact=args.n_exact, n_random=args.n_random,
                          batch_size=args.batch_size, progress=True)
    wall = time.perf_counter() - t0
    suffix = "" if args.dtype == "float32" else f"_{args.dtype}"
    out = Path(args.out) if args.out else RESULTS / f"circuits_{args.model}_{args.task}{suffix}"
    study.report["run"] = {"wall_seconds": wall, "peak_rss_mb": rss_kb("VmHWM") / 1024, "dtype": args.dtype,
                           "load_after": os.getloadavg()[0]}
    study.save(out)
    r = study.report
    clean, corrupt = torch.tensor(r["behaviour"]["clean"]), torch.tensor(r["behaviour"]["corrupt"])
    print(json.dumps({"out": str(out), "clean_metric": float(clean.mean()), "corrupt_metric": float(corrupt.mean()),
                      "clean_positive": int((clean > 0).sum()), "agreement": r["agreement"],
                      "curve": r["curve"]["summary"], "heads": {k: r["heads"][k] for k in ("pearson", "spearman",
                                                                                          "top_overlap")},
                      "seconds": r["seconds"], "run": r["run"]}, indent=1), flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
