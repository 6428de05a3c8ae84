"""Latency of the ``lmscope serve`` workbench views, served: each view's HTTP call timed end to end on a 16-token
prompt (a 16-token IOI clean/corrupt pair for patching), against the issue's targets.

- lens heat map: ``/api/v1/decode`` of every layer and position, top-5, the logit lens and (SmolLM2) the tuned lens
  as the page asks them (two requests at once); each alone too. Target <= 0.25 s;
- attention grid: ``/api/v1/attention`` of the middle layer (the repeated-token head scores computed on the first
  call, then reused: the first call is reported apart). Target <= 0.3 s;
- DLA: ``/api/v1/attribution`` (per layer and head). Target <= 0.5 s;
- exact patching maps: ``/api/v1/patching`` with ``wait`` (the ``resid_pre`` x position map and the head map; a
  new target each repeat, so no answer comes from the cache). Target <= 15 s;
- for information: the EAP-IG graph (``/api/v1/graph``, 5 steps) and a cached repeat of a patching request.

The server runs in this process (uvicorn in a thread, 127.0.0.1, a free port) with ``--threads`` torch threads.
Each figure is the median of ``--repeats`` calls after one warm-up call; ratios are median / target (<= 1 meets it).

    .venv/bin/python benchmarks/bench_workbench.py [--models smollm2 gemma-3-270m] [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

TOKENS = 16
TARGETS = {"lens heat map (page: every lens at once)": 0.25, "attention grid, one layer": 0.3, "DLA": 0.5,
           "exact patching maps": 15.0}


def post(url: str, path: str, body: dict[str, Any]) -> tuple[float, Any]:
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=900) as r:
        data = json.loads(r.read())
    elapsed = time.perf_counter() - t
    if data.get("state") not in (None, "done"):
        raise RuntimeError(f"{path}: job {data.get('state')}: {data.get('error')}")
    return elapsed, data


def together(url: str, calls: list[tuple[str, dict[str, Any]]]) -> float:
    """Wall time of ``calls`` posted at once (as the page posts its two lens decodes); a failed call raises, so a
    broken request is never timed as a fast one."""
    t = time.perf_counter()
    with ThreadPoolExecutor(len(calls)) as pool:
        for future in [pool.submit(post, url, path, body) for path, body in calls]:
            future.result()
    return time.perf_counter() - t


def median_of(fn: Any, repeats: int) -> float:
    fn(0)  # warm-up
    return statistics.median(fn(i + 1) for i in range(repeats))


def pair_of_length(model: Any, n: int) -> tuple[list[int], list[int], str, str | None]:
    """An IOI pair as token ids of exactly ``n`` tokens: neutral tokens inserted after any BOS (or cut from the
    front), the same in both prompts."""
    from lmscope.probes.circuits import ioi_pairs

    task = ioi_pairs(model, n=1)
    clean, corrupt = (model.tokenize(p).input_ids[0].tolist() for p in (task.clean[0], task.corrupt[0]))
    bos = 1 if model.tokenizer.bos_token_id is not None and clean[0] == model.tokenizer.bos_token_id else 0
    filler = model.tokenizer("Earlier that day, in a quiet little town by the sea, it rained.",
                             add_special_tokens=False)["input_ids"]
    missing = n - len(clean)
    if missing >= 0:
        clean, corrupt = (p[:bos] + filler[:missing] + p[bos:] for p in (clean, corrupt))
    else:
        clean, corrupt = (p[:bos] + p[bos - missing:] for p in (clean, corrupt))
    assert len(clean) == len(corrupt) == n
    return clean, corrupt, task.targets[0], task.distractors[0]


def serve(name: str) -> tuple[Any, Any, Any]:
    from lmscope.interventions import HookedModel
    from lmscope.lens.lenses import LogitLens
    from lmscope.lens.serve.runner import ServerThread
    from lmscope.lens.serve.state import ServerState

    model = HookedModel.default() if name == "smollm2" else HookedModel.from_pretrained(name)
    lenses: dict[str, Any] = {"logit": LogitLens(model)}
    if name == "smollm2":
        from lmscope.lens.training.fit import default_lens

        lenses["tuned"] = default_lens(model, progress=False)
    state = ServerState(model, lenses)
    return model, state, ServerThread(state).start()


def bench_model(name: str, repeats: int) -> list[tuple[str, float, float | None]]:
    model, state, server = serve(name)
    url, rows = server.url, []
    try:
        clean, corrupt, target, distractor = pair_of_length(model, TOKENS)
        decode = {lens: {"prompts": [clean], "lens": lens, "top_k": 5, "positions": "all"} for lens in state.lenses}
        page = [("/api/v1/decode", body) for body in decode.values()]
        rows.append(("lens heat map (page: every lens at once)", median_of(lambda i: together(url, page), repeats)))
        for lens, body in decode.items():
            rows.append((f"  {lens} lens alone", median_of(lambda i, b=body: post(url, "/api/v1/decode", b)[0],
                                                             repeats)))
        layer = model.n_layers // 2
        first, _ = post(url, "/api/v1/attention", {"prompt": clean, "layer": layer})
        rows.append(("attention grid, one layer", median_of(
            lambda i: post(url, "/api/v1/attention", {"prompt": clean, "layer": (layer + i) % model.n_layers})[0],
            repeats)))
        rows.append(("  first call (repeated-token scores)", first))
        dla = {"prompt": clean, "target": target}
        rows.append(("DLA", median_of(lambda i: post(url, "/api/v1/attribution", dla)[0], repeats)))
        wrong = {} if distractor is None else {"distractor": distractor}
        tops = post(url, "/api/v1/decode", {"prompts": [clean], "positions": "last", "layers": "-1",
                                            "top_k": repeats + 3})[1]["trajectories"][0]["final_top_ids"][0]
        tops = [t for t in tops if distractor is None or t != model.token_id(distractor)]
        pair = {"prompt": clean, "corrupt": corrupt, "wait": True, **wrong}
        rows.append(("exact patching maps", median_of(
            lambda i: post(url, "/api/v1/patching", {**pair, "target": tops[i]})[0], repeats)))
        rows.append(("  same request again (cached)", post(url, "/api/v1/patching", {**pair, "target": tops[0]})[0]))
        rows.append(("EAP-IG graph (5 steps, information)", post(url, "/api/v1/graph", {**pair, "target": target})[0]))
    finally:
        server.stop()
    return [(what, secs, TARGETS.get(what)) for what, secs in rows]


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["smollm2", "gemma-3-270m"], choices=["smollm2", "gemma-3-270m"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"lmscope serve workbench, served, {TOKENS}-token prompt, {args.threads} torch threads, "
          f"median of {args.repeats} after a warm-up")
    for name in args.models:
        print(f"\n{name}\n{'view':<46} {'seconds':>9} {'target':>8} {'ratio':>7}")
        for what, secs, target in bench_model(name, args.repeats):
            extra = f"{target:>8.2f} {secs / target:>7.2f}" if target else ""
            print(f"{what:<46} {secs:>9.3f} {extra}")


if __name__ == "__main__":
    main()
