"""Cost of context-local sessions: ``model.run(batch, [Cache("resid_post.*")])`` with the per-hook context gate
vs the same run with the gate bypassed (the pre-concurrency behaviour), both as ratios to a plain HF forward.

Run: python benchmarks/bench_session_gate.py [--repeats 30] [--shape 1x16]

Same process, same inputs, interleaved round-robin with the order rotating each round (``time_all`` of
bench_overhead.py); the bypass patches ``Session.is_active`` to always answer True, which is exactly the
hooks of the earlier code (every hook acting on every forward).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lmscope.interventions import Cache, HookedModel
from lmscope.interventions.backends import hooks

sys.path.insert(0, str(Path(__file__).parent))
from bench_overhead import make_inputs, time_all  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--shape", default="1x16")
    args = p.parse_args()
    b, s = (int(x) for x in args.shape.split("x"))
    model = HookedModel.default()
    batch = make_inputs(model, b, s)
    sites = model.sites("resid_post.*")
    gated = hooks.Session.is_active

    def plain() -> object:
        with torch.no_grad():
            return model.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                  position_ids=batch.position_ids, use_cache=False).logits

    def with_gate() -> object:
        hooks.Session.is_active = gated  # type: ignore[method-assign]
        return model.run(batch, [Cache(sites)]).cache

    def without_gate() -> object:
        hooks.Session.is_active = lambda self: True  # type: ignore[method-assign]
        try:
            return model.run(batch, [Cache(sites)]).cache
        finally:
            hooks.Session.is_active = gated  # type: ignore[method-assign]

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, shape {b}x{s}, {args.repeats} rounds")
    medians, paired = time_all({"hf_plain": plain, "lmscope_gated": with_gate, "lmscope_no_gate": without_gate},
                               args.repeats)
    for name in medians:
        print(f"  {name:16s} {medians[name] * 1e3:8.2f} ms   ratio of medians {medians[name] / medians['hf_plain']:.3f}"
              f"   median paired ratio {paired[name]:.3f}")
    cost = medians["lmscope_gated"] / medians["lmscope_no_gate"]
    print(f"  gate cost (gated / no gate, ratio of medians): {cost:.4f}")


if __name__ == "__main__":
    main()
