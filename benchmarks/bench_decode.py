"""`lmscope decode` speed (whole process, warm caches) and decode memory against a plain forward.

Run: python benchmarks/bench_decode.py [--runs 5] [--lens tuned]

Speed: the CLI runs as a fresh process `--runs` times (after one warm-up that fills the caches); the
median wall time is reported with its --timings breakdown (import, load, decode). Memory: in fresh
subprocesses, the process peak RSS during `lens.decode(prompt)` (model, lens and all) is compared with
the peak during a plain HF forward of the same prompt; target: decode <= plain forward + 10%.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from memory import peak_mb  # noqa: E402

PROMPT = "The capital of France is"
LMSCOPE = str(Path(sys.executable).with_name("lmscope"))


def cli_runs(runs: int, lens: str) -> None:
    cmd = [LMSCOPE, "decode", PROMPT, "--lens", lens, "--positions", "last", "--timings"]
    subprocess.run(cmd, capture_output=True, check=True)  # warm-up: default model / lens caches
    walls, phases = [], []
    for _ in range(runs):
        t = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - t)
        m = dict(re.findall(r"([a-z+]+) ([0-9.]+)s", out.stderr.split("timings:")[-1]))
        phases.append({k: float(v) for k, v in m.items()})
    med = statistics.median(walls)
    print(f"lmscope decode --lens {lens}: median wall {med:.2f} s over {runs} runs (target <= 4 s)")
    for key in phases[0]:
        print(f"  {key:15s} {statistics.median(p[key] for p in phases):.2f} s")
    probe = subprocess.run([sys.executable, "-c", "import time; t=time.perf_counter(); import torch; "
                            "a=time.perf_counter(); import transformers.modeling_utils; "
                            "print(a-t, time.perf_counter()-a)"], capture_output=True, text=True, check=True)
    torch_s, tf_s = map(float, probe.stdout.split())
    print(f"  (bare imports on this machine: torch {torch_s:.2f} s, transformers.modeling_utils {tf_s:.2f} s)")


def memory_child(which: str, n_tokens: int, lens_kind: str) -> None:
    import torch

    from lmscope.interventions import HookedModel
    from lmscope.lens import LogitLens
    from lmscope.lens.training.fit import default_lens

    model = HookedModel.default()
    text = (" ".join(["The quick brown fox jumps over the lazy dog."] * 200))
    ids = model.tokenize(text).input_ids[:, :n_tokens]
    lens = LogitLens(model) if lens_kind == "logit" else default_lens(model)

    def plain() -> object:
        with torch.no_grad():
            return model.hf_model(input_ids=ids, use_cache=False).logits

    def decode() -> object:
        return lens.decode(ids, positions="all")
    print(json.dumps(peak_mb(plain if which == "plain" else decode)))


def memory(n_tokens: int, lens: str) -> None:
    res = {}
    for which in ("plain", "decode"):
        out = subprocess.run([sys.executable, __file__, "--child", which, str(n_tokens), lens],
                             capture_output=True, text=True, check=True)
        res[which] = json.loads(out.stdout.strip().splitlines()[-1])
    p, d = res["plain"], res["decode"]
    print(f"decode memory, {n_tokens} tokens, {lens} lens: peak RSS plain forward {p['peak']:.0f} MB "
          f"(+{p['growth']:.0f} MB over the loaded model), decode {d['peak']:.0f} MB (+{d['growth']:.0f} MB) "
          f"-> ratio {d['peak'] / p['peak']:.3f} (target <= 1.10)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--lens", default="tuned")
    p.add_argument("--tokens", type=int, nargs="*", default=[256, 1000])
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        memory_child(args.child[0], int(args.child[1]), args.child[2])
        return
    cli_runs(args.runs, args.lens)
    for n in args.tokens:
        memory(n, args.lens)


if __name__ == "__main__":
    main()
