"""Benchmark: the full binding-ID study on SmolLM2 or Gemma 3 270M (all four tasks, Table-1 rows, 100+ samples each).

Reports wall time and peak memory, and the ratio of the study's wall time to one clean scoring pass over the
CAPITALS test prompts measured in the same process (the study costs that many clean passes). Writes the
study's JSON report (the notebook plots it), by default ``benchmarks/results/binding_report_<model>.json``.

    .venv/bin/python benchmarks/bench_binding.py --model smollm2 --n-train 128 --n-test 100
    .venv/bin/python benchmarks/bench_binding.py --model gemma-3-270m --n-train 128 --n-test 100
    .venv/bin/python benchmarks/bench_binding.py --part kv --n-train 32 --n-test 32 --threads 1
    # --part kv: one task (capitals: baseline + estimate_deltas + table_one) with method="full" and method="kv"
    # in the same process; prints both wall times, their ratio and the largest log-prob difference
    # on an accelerator, with the GGUF and tokenizer copied there:
    python3 benchmarks/bench_binding.py --gguf DIR/SmolLM2-135M-Instruct.Q4_1.gguf --tokenizer DIR --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from memory import rss_kb  # noqa: E402

MODELS = ("smollm2", "gemma-3-270m")
RESULTS = Path(__file__).parent / "results"


def default_out(model: str) -> Path:
    """Where a model's report goes unless ``--out`` says otherwise (the notebook reads these)."""
    return RESULTS / f"binding_report_{model}.json"


def load(args: argparse.Namespace):
    from lmscope.interventions import HookedModel

    if args.gguf is None:
        if args.model == "gemma-3-270m":
            return HookedModel.from_pretrained("gemma-3-270m", device=args.device)
        return HookedModel.default(device=args.device)
    from transformers import AutoTokenizer

    from lmscope.interventions.defaults import load_gguf

    model, tok = load_gguf(args.gguf)
    if args.tokenizer:
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
    return HookedModel(model.to(args.device).eval(), tok)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def merge(paths: list[str], out: str, model: str | None = None) -> None:
    """Merge reports of runs that split the study (per-task parts, main-task extras) into one report."""
    merged: dict = {"tasks": {}, "benchmark": {"runs": []}}
    for path in paths:
        rep = json.loads(Path(path).read_text())
        for name, entry in rep.pop("tasks").items():
            merged["tasks"].setdefault(name, {}).update(entry)
        merged["benchmark"]["runs"].append(rep.pop("benchmark"))
        settings = rep.pop("settings")
        merged.setdefault("settings", {})[Path(path).stem] = settings
        merged.update({k: v for k, v in rep.items() if k != "wall_s"})
    merged["tasks"] = {k: v for k, v in merged["tasks"].items() if v}
    names = {r.get("model_name") for r in merged["benchmark"]["runs"]} - {None}
    if len(names) > 1:
        raise SystemExit(f"refusing to merge reports of different models: {sorted(names)}")
    merged["model_name"] = names.pop() if names else model
    merged["benchmark"]["command"] = " ; ".join(r["command"] for r in merged["benchmark"]["runs"])
    Path(out).write_text(json.dumps(merged, indent=1))
    print(json.dumps(merged["benchmark"], indent=1))


def compare_methods(model, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]
    """baseline + estimate_deltas + table_one on CAPITALS, once per scoring method; the log-probs of every
    Table-1 row are compared too (the same score_many calls table_one makes)."""
    from lmscope.probes.binding import baseline, build_prompt, estimate_deltas, load_task, sample_contexts, table_one
    from lmscope.probes.binding.means import _shift_maker
    from lmscope.probes.binding.runs import score_many

    task, kw = load_task("capitals"), dict(batch_size=args.batch_size, progress=False)
    results, walls, phases = {}, {}, {}
    for method in ("full", "kv", "full", "kv"):  # twice each: the first of each is a warm-up
        sync(args.device)
        t0 = time.perf_counter()
        base = baseline(model, task, args.n_test, method=method, **kw)
        sync(args.device)
        t1 = time.perf_counter()
        deltas = estimate_deltas(model, task, args.n_train, method=method, **kw)
        sync(args.device)
        t2 = time.perf_counter()
        table = table_one(model, task, deltas, args.n_test, method=method, **kw)
        sync(args.device)
        t3 = time.perf_counter()
        walls[method] = t3 - t0
        phases[method] = {"baseline": t1 - t0, "estimate_deltas": t2 - t1, "table_one": t3 - t2}
        results[method] = (base, deltas, table)
        print(f"{method}: {walls[method]:.2f} s ({', '.join(f'{k} {v:.2f}' for k, v in phases[method].items())})",
              flush=True)
    deltas = results["full"][1]
    contexts = sample_contexts(model.tokenizer, task, args.n_test, split="test", seed=0, spare_entity=True)
    prompts = [build_prompt(model.tokenizer, task, c, q) for c in contexts for q in (0, 1)]
    makes = {"none": None, **{row: _shift_maker(prompts, deltas, kinds) for row, kinds in (
        ("swap_attributes", ("attribute",)), ("swap_entities", ("entity",)), ("swap_both", ("entity", "attribute")))}}
    lp = {m: score_many(model, prompts, makes, method=m, **kw) for m in ("full", "kv")}
    diff = max(float((lp["kv"][k] - lp["full"][k]).abs().max()) for k in makes)
    ddiff = max(float((a - b).abs().max()) for a, b in zip(results["full"][1].entity + results["full"][1].attribute,
                                                           results["kv"][1].entity + results["kv"][1].attribute))
    rows = {m: {k: v["accuracy"] for k, v in results[m][2]["rows"].items()} for m in ("full", "kv")}
    print(json.dumps({"full_s": walls["full"], "kv_s": walls["kv"], "ratio_full_over_kv": walls["full"] / walls["kv"],
                      "ratio_per_phase": {k: phases["full"][k] / phases["kv"][k] for k in phases["kv"]},
                      "max_abs_logprob_diff": diff, "max_abs_delta_diff": ddiff,
                      "same_table_one_accuracies": rows["full"] == rows["kv"],
                      "baseline_acc": [results[m][0]["accuracy"] for m in ("full", "kv")],
                      "n_train": args.n_train, "n_test": args.n_test, "batch_size": args.batch_size,
                      "threads": torch.get_num_threads()}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=MODELS, default="smollm2", help="which real model (the GGUF path is SmolLM2)")
    ap.add_argument("--gguf"), ap.add_argument("--tokenizer"), ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-train", type=int, default=128)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--n-other", type=int, default=64, help="samples for factorization/position/subspace")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None, help="report path (default benchmarks/results/binding_report_<model>.json)")
    ap.add_argument("--tasks", default="capitals,shapes,fruits,parallel")
    ap.add_argument("--table-slots", default="0,1", help="queried slots of the Table-1 rows")
    ap.add_argument("--fractions", default="-0.5,0,0.25,0.5,0.75,1,1.5")
    ap.add_argument("--grid", default="-1,0,1,2")
    ap.add_argument("--position-what", default="entity,attribute")
    ap.add_argument("--parts", default="baseline,factorization,position,table_one,transfer,subspace,patching")
    ap.add_argument("--n-transfer", type=int, default=None, help="samples for the transfer runs (default n-test)")
    ap.add_argument("--smoke-first", action="store_true", help="run a tiny study first (fails fast, warms up)")
    ap.add_argument("--merge", nargs="+", help="merge these report files into --out and exit")
    ap.add_argument("--part", choices=("study", "kv"), default="study",
                    help="kv: time one task with the full-prompt and the KV-cache scoring paths")
    args = ap.parse_args()
    args.out = args.out or str(default_out(args.model))
    if args.merge:
        merge(args.merge, args.out, args.model)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    from lmscope.probes.binding import binding_study, build_prompt, load_task, sample_contexts, score

    model = load(args)
    if args.part == "kv":
        compare_methods(model, args)
        return
    if args.smoke_first:
        t0 = time.perf_counter()
        binding_study(model, n_train=4, n_test=4, n_factorization=2, n_position=2, n_subspace=2, progress=False)
        print(f"smoke study ok in {time.perf_counter() - t0:.1f} s", flush=True)
    task = load_task("capitals")
    prompts = [build_prompt(model.tokenizer, task, c, 0)
               for c in sample_contexts(model.tokenizer, task, args.n_test, seed=0)]
    score(model, prompts[: args.batch_size], batch_size=args.batch_size, progress=False)  # warm-up
    sync(args.device)
    t0 = time.perf_counter()
    score(model, prompts, batch_size=args.batch_size, progress=False)
    sync(args.device)
    clean = time.perf_counter() - t0
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    floats = lambda text: tuple(float(x) for x in text.split(","))
    report = binding_study(model, args.tasks.split(","), n_train=args.n_train, n_test=args.n_test,
                           n_factorization=args.n_other, n_position=args.n_other, n_subspace=args.n_other,
                           batch_size=args.batch_size, table_slots=tuple(int(x) for x in args.table_slots.split(",")),
                           fractions=floats(args.fractions), grid=floats(args.grid), n_transfer=args.n_transfer,
                           position_what=tuple(args.position_what.split(",")), parts=tuple(args.parts.split(",")),
                           transfer_rows=("swap_attributes", "swap_entities"))
    sync(args.device)
    wall = time.perf_counter() - t0
    bench = {"device": str(torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"),
             "wall_s": wall, "clean_pass_s": clean, "ratio_study_over_clean_pass": wall / clean,
             "peak_rss_mb": rss_kb("VmHWM") / 1024,
             "peak_gpu_mb": (torch.cuda.max_memory_allocated() / 2**20) if args.device.startswith("cuda") else None,
             "n_train": args.n_train, "n_test": args.n_test, "n_other": args.n_other, "batch_size": args.batch_size,
             "model_name": args.model, "command": " ".join(sys.argv)}
    report["model_name"] = args.model
    report["benchmark"] = bench
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(bench, indent=1))
    for name, entry in report["tasks"].items():
        if "table_one" not in entry:
            continue
        rows = {k: [round(x, 3) for x in v["accuracy"]] for k, v in entry["table_one"]["rows"].items()}
        print(name, "baseline acc", round(entry["baseline"]["accuracy"], 3), "calibrated",
              round(entry["baseline"]["calibrated_accuracy"], 3), "table1 acc (q0, q1):", rows)


if __name__ == "__main__":
    main()
