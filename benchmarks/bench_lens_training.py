"""Benchmark: tuned-lens training, the reference package's recipe vs lmscope's, at the same token budget.

Both lenses see the same training tokens (the first ``--tokens`` tokens of the
train split of the offline default corpus, in chunks of ``--seq-len``) and are
scored on the same held-out tokens (the first ``--eval-tokens`` of the held-out
split: whole documents the training never saw).

(a) reference: ``tuned_lens.nn.TunedLens`` from ``tuned-lens==0.2.0`` (installed with
    ``pip install --no-deps --target .venv-bench tuned-lens==0.2.0``), trained with its
    published recipe: SGD, Nesterov momentum 0.9, lr 0.1 (= lr_scale 1 x (1 - 0.9)),
    weight decay 1e-3, linear decay, gradient clipping at 1.0, one full-vocabulary
    projection + backward per layer, one chunk per step. Run in float32 (its bf16 autocast
    is ~4x slower on CPUs without bf16 matrix units). Its translators read the same
    ``resid_post.L`` states ours do, so the per-layer numbers line up.
(b) ours: :func:`lmscope.lens.training.fit.train_tuned_lens` (closed-form least squares on the same tokens,
    optionally followed by fused-KL steps that use part of the same budget).

Usage: ``.venv/bin/python benchmarks/bench_lens_training.py [--tokens 4096] [--eval-tokens 1024] [--json OUT]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train_reference(model, chunks, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-3):
    """The tuned-lens 0.2.0 recipe around its own ``TunedLens`` module; returns (module, seconds)."""
    import torch

    sys.path.insert(0, str(ROOT / ".venv-bench"))
    from tuned_lens.nn import TunedLens as RefTunedLens

    from lmscope.interventions.collect import run_readings as collect

    readings = [f"resid_post.{i}" for i in range(model.n_layers)]
    t0 = time.perf_counter()
    ref = RefTunedLens.from_model(model.hf_model)
    params = [p for p in ref.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum,
                          nesterov=True, weight_decay=weight_decay)
    steps = len(chunks)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / steps))
    for k, ids in enumerate(chunks):
        hs, final_logits = collect(model, ids, readings)
        labels = final_logits.log_softmax(-1)
        for i, h in enumerate(hs):  # one projection + backward per layer, as in the reference loop
            logits = ref(h, idx=i)
            loss = torch.sum(labels.exp() * (labels - logits.log_softmax(-1)), dim=-1).mean()
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=False)
        sched.step()
        print(f"  reference step {k + 1}/{steps}: {time.perf_counter() - t0:.0f} s", flush=True)
    return ref, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=4096, help="training token budget (both methods)")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=1024)
    ap.add_argument("--ours-steps", type=int, default=0,
                    help="fused-KL steps of one chunk for ours, taken out of the same token budget")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write all numbers here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from lmscope.interventions import HookedModel
    from lmscope.lens.lenses import TunedLens
    from lmscope.lens.training.corpus import model_tokenizer
    from lmscope.lens.training.evaluate import evaluate_lens
    from lmscope.lens.training.fit import train_tuned_lens
    from lmscope.lens.training.offline import default_corpus

    model = HookedModel.default()
    train_corpus, held = default_corpus("train"), default_corpus("heldout")
    n_chunks = args.tokens // args.seq_len
    chunks = [torch.tensor([c], dtype=torch.long)
              for c in train_corpus.take(model_tokenizer(model), n_chunks, args.seq_len)]
    print(f"model {model!r}; {n_chunks} chunks x {args.seq_len} = {n_chunks * args.seq_len} training tokens; "
          f"threads {torch.get_num_threads()}", flush=True)

    print("(a) reference tuned-lens 0.2.0 recipe ...", flush=True)
    ref, ref_s = train_reference(model, chunks)
    ref_lens = TunedLens(model)
    with torch.no_grad():
        for i, tr in enumerate(ref.layer_translators):
            ref_lens.weight[i].copy_(tr.weight)
            ref_lens.bias[i].copy_(tr.bias)
    ref_lens.name = "reference"

    print("(b) ours ...", flush=True)
    steps = args.ours_steps
    t0 = time.perf_counter()
    ours = train_tuned_lens(model, train_corpus, steps=steps, tokens_per_step=args.seq_len, seq_len=args.seq_len,
                            init_tokens=(n_chunks - steps) * args.seq_len, progress=False)
    ours_s = time.perf_counter() - t0

    print("evaluating on held-out text ...", flush=True)
    rep_ours = evaluate_lens(ours, held, max_tokens=args.eval_tokens, seq_len=args.seq_len)
    rep_ref = evaluate_lens(ref_lens, held, max_tokens=args.eval_tokens, seq_len=args.seq_len, compare_logit=False)
    kl = {"logit": rep_ours["lenses"]["logit"]["kl"]["nats_per_token"],
          "reference": rep_ref["lenses"]["reference"]["kl"]["nats_per_token"],
          "ours": rep_ours["lenses"]["tuned"]["kl"]["nats_per_token"]}
    mean = {k: sum(v) / len(v) for k, v in kl.items()}
    result = {"tokens": n_chunks * args.seq_len, "eval_tokens": rep_ours["tokens"], "seq_len": args.seq_len,
              "ours_steps": steps, "threads": torch.get_num_threads(),
              "wall_s": {"reference": ref_s, "ours": ours_s}, "mean_kl": mean, "per_layer_kl": kl,
              "readings": rep_ours["readings"], "ce_nats": {
                  "logit": rep_ours["lenses"]["logit"]["ce"]["nats_per_token"],
                  "reference": rep_ref["lenses"]["reference"]["ce"]["nats_per_token"],
                  "ours": rep_ours["lenses"]["tuned"]["ce"]["nats_per_token"]},
              "ce_bits_per_byte": {
                  "logit": rep_ours["lenses"]["logit"]["ce"]["bits_per_byte"],
                  "ours": rep_ours["lenses"]["tuned"]["ce"]["bits_per_byte"]},
              "load_avg": os.getloadavg()}
    print(f"\nwall time: reference {ref_s:.1f} s, ours {ours_s:.1f} s (ratio {ours_s / ref_s:.3f})")
    print(f"held-out mean KL (nats/token): logit {mean['logit']:.3f}, reference {mean['reference']:.3f}, "
          f"ours {mean['ours']:.3f}")
    print("\n| reading | logit KL | reference KL | ours KL |\n|---|---|---|---|")
    for i, name in enumerate(result["readings"]):
        print(f"| {name} | {kl['logit'][i]:.3f} | {kl['reference'][i]:.3f} | {kl['ours'][i]:.3f} |")
    ok = mean["ours"] <= mean["reference"] and ours_s <= ref_s / 3
    print(f"\ntarget (ours KL <= reference KL in <= 1/3 of its time): {'MET' if ok else 'NOT MET'}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
