"""Fast tuned-lens training: closed-form least-squares translators, then a short fused-KL fine-tune.

Objective (Belrose et al. 2023, self-distillation): for every reading ``i`` and
token ``t``, ``KL(p_final(t) || p_lens_i(t))``, averaged over tokens and
readings. No labels are needed, so any text works.

Why not the reference recipe? It runs, per layer, a separate full-vocabulary
projection, softmax and backward (``d_model x d_vocab`` twice per token per
layer), for 65M tokens. On SmolLM2 that is ~25x the cost of the model's own
forward. This module instead:

1. **Closed-form init** (``init="lstsq"``). One frozen forward per chunk caches
   every reading; we accumulate, in float64, ``Z^T Z`` and ``Z^T Y`` where
   ``z_t = [h_t, 1] / rms(h_t)`` is the reading and ``y_t = h_final(t) / rms(h_final(t))``
   the last hidden state (pre-norm), both scale-normalised because the model's
   final norm discards scale anyway. A ridge solve per reading, shrunk towards
   the identity translator, gives ``(I + A_i, b_i)``. This costs one model
   forward per token plus ``d^2`` per reading -- no vocabulary work at all -- and
   already recovers most of the KL reduction.
2. **Fused KL fine-tune** (``steps > 0``). The frozen forward runs once per batch
   under ``no_grad`` with a ``Cache`` on all readings; the target distribution
   (probabilities and ``sum p log p``) is computed once and shared by all
   readings; each reading's KL and its gradient w.r.t. the normed hidden state are
   computed in one pass over row blocks (``z = n W^T``, ``grad = (softmax(z) - p) W``)
   so no ``[tokens, vocab]`` tensor is kept for autograd; a single backward then
   flows through all translators. Adam, linear decay, gradient clipping.

Checkpoints (``checkpoint_dir``, every ``checkpoint_every`` steps) hold the lens
parameters, the optimiser state, the step, the data position and the RNG state
as ``state.safetensors`` + ``state.json`` (atomic folder write, no pickle).
``resume=True`` continues from the last checkpoint and ends exactly where an
uninterrupted run ends (same data order, same arithmetic).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
from lmscope.interventions.collect import run_readings
from lmscope.interventions.errors import InputError, LmscopeError

from ..lenses import TunedLens
from .corpus import Corpus, CorpusExhaustedError, as_corpus, model_tokenizer

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel


CHECKPOINT_FORMAT = 1
STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"


def _final_reading(model: HookedModel, readings: Sequence[str]) -> int | None:
    last = f"resid_post.{model.n_layers - 1}"
    return list(readings).index(last) if last in readings else None


# -- closed-form initialisation ---------------------------------------------------------------------
class LstsqStats:
    """Streamed float64 sufficient statistics for the per-reading ridge regressions."""

    def __init__(self, n_readings: int, d: int, device: torch.device | str = "cpu") -> None:
        self.zz = torch.zeros(n_readings, d + 1, d + 1, dtype=torch.float64, device=device)
        self.zy = torch.zeros(n_readings, d + 1, d, dtype=torch.float64, device=device)
        self.n_tokens = 0

    def update(self, hs: Sequence[torch.Tensor], target: torch.Tensor) -> None:
        """Add one batch: ``hs[i]`` [N, d] readings, ``target`` [N, d] final hidden state (pre-norm).

        Per-batch products run in float32 (one batched matmul); the running sums are float64.
        """
        y = target.float()
        y = y / y.pow(2).mean(-1, keepdim=True).clamp_min(1e-30).sqrt()
        h = torch.stack([x.float() for x in hs])  # [R, N, d]
        z = torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)
        z = z / h.pow(2).mean(-1, keepdim=True).clamp_min(1e-30).sqrt()
        zt = z.transpose(1, 2)
        self.zz += torch.bmm(zt, z).double()
        self.zy += torch.matmul(zt, y).double()
        self.n_tokens += int(target.shape[0])

    def solve(self, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Ridge solutions shrunk towards the identity: ``(weight [R, d, d], bias [R, d])`` in float32."""
        r, d1, d = self.zy.shape
        w0 = torch.zeros(d1, d, dtype=torch.float64, device=self.zz.device)
        w0[:d] = torch.eye(d, dtype=torch.float64, device=self.zz.device)
        weights, biases = [], []
        eye = torch.eye(d1, dtype=torch.float64, device=self.zz.device)
        for i in range(r):
            lam = ridge * float(torch.diagonal(self.zz[i]).mean()) + 1e-12
            w = torch.linalg.solve(self.zz[i] + lam * eye, self.zy[i] + lam * w0)
            weights.append((w[:d].T - torch.eye(d, dtype=torch.float64, device=w.device)).float())
            biases.append(w[d].float())
        return torch.stack(weights), torch.stack(biases)


# -- fused KL ---------------------------------------------------------------------------------------
class _Decoder:
    """How normed hidden states become logits: a plain linear unembedding (fused path) or anything else."""

    def __init__(self, model: HookedModel) -> None:
        self.model = model
        unembed = model.unembed
        cap = getattr(model.hf_model.config, "final_logit_softcapping", None)
        self.fused = isinstance(unembed, torch.nn.Linear) and not cap
        if self.fused:
            assert isinstance(unembed, torch.nn.Linear)
            self.weight = unembed.weight.detach().float()  # no copy for fp32 models
            self.bias = unembed.bias.detach().float() if unembed.bias is not None else None

    def normed(self, t: torch.Tensor) -> torch.Tensor:
        """Final norm of translated states (in the model dtype), back to float32."""
        return self.model.final_norm(t.to(self.model.dtype)).float()


class _FusedKLFunction(torch.autograd.Function):
    """Sum over rows of KL(p || softmax(n W^T + b)); its gradient w.r.t. ``n`` is made in the same pass."""

    @staticmethod
    def forward(ctx: Any, n: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, p: torch.Tensor,
                plogp: torch.Tensor, row_block: int) -> torch.Tensor:
        grad = torch.empty_like(n)
        total = torch.zeros((), dtype=torch.float64, device=n.device)
        for s in range(0, n.shape[0], row_block):
            e = min(s + row_block, n.shape[0])
            z = n[s:e] @ weight.T
            if bias is not None:
                z += bias
            pz = torch.einsum("nv,nv->n", p[s:e], z)
            m = z.amax(-1, keepdim=True)
            z.sub_(m).exp_()
            ssum = z.sum(-1, keepdim=True)
            lse = m.squeeze(-1) + ssum.squeeze(-1).log()
            total += (plogp[s:e] - pz + lse).double().sum()
            z.div_(ssum).sub_(p[s:e])  # softmax(z) - p = dKL/dz
            grad[s:e] = z @ weight
        ctx.save_for_backward(grad)
        return total.float()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        (grad,) = ctx.saved_tensors
        return grad * g, None, None, None, None, None


def target_stats(final_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Target probabilities ``p`` [N, V] and ``sum p log p`` [N] (shared by every reading)."""
    logp = torch.log_softmax(final_logits.float(), dim=-1)
    p = logp.exp()
    plogp = (p * logp).sum(-1)
    return p, plogp


def kl_sum(lens: TunedLens, decoder: _Decoder, h: torch.Tensor, i: int, p: torch.Tensor, plogp: torch.Tensor,
           row_block: int = 512) -> torch.Tensor:
    """Summed KL(final || lens) over the rows of ``h`` at reading ``i`` (differentiable in the lens)."""
    t = lens.translate(h, i)
    if decoder.fused:
        return _FusedKLFunction.apply(decoder.normed(t), decoder.weight, decoder.bias, p, plogp, row_block)
    logq = torch.log_softmax(lens.model.decode_hidden(t.to(lens.model.dtype)).float(), dim=-1)
    return (plogp - (p * logq).sum(-1)).sum()


# -- checkpoints ------------------------------------------------------------------------------------
def _save_checkpoint(folder: Path, lens: TunedLens, opt: torch.optim.Optimizer, step: int, position: int,
                     gen: torch.Generator, recipe: dict[str, Any], loss_history: list[float]) -> None:
    from lmscope.interventions.artifacts import save_artifact

    tensors: dict[str, torch.Tensor] = {"lens.weight": lens.weight.detach(), "lens.bias": lens.bias.detach(),
                                        "rng.generator": gen.get_state()}
    sd = opt.state_dict()
    opt_meta: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        keys = []
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v.detach().clone() if v.dim() else v.detach().reshape(1)
                keys.append([k, v.dim() == 0])
            else:
                keys.append([k, v])
        opt_meta["state"][str(pid)] = keys
    meta = {"format": CHECKPOINT_FORMAT, "step": step, "data_position": position, "recipe": recipe,
            "optimizer": opt_meta, "loss_history": loss_history}
    save_artifact(folder, meta, tensors, config_name=STATE_JSON, tensors_name=STATE_TENSORS)


def _load_checkpoint(folder: Path, lens: TunedLens, opt: torch.optim.Optimizer, gen: torch.Generator,
                     recipe: dict[str, Any]) -> tuple[int, int, list[float]]:
    from lmscope.interventions.artifacts import load_artifact

    meta, tensors = load_artifact(folder, config_name=STATE_JSON, tensors_name=STATE_TENSORS)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise LmscopeError(f"{folder} is not a lens-training checkpoint of format {CHECKPOINT_FORMAT}.")
    if meta["recipe"] != recipe:
        diff = {k: (meta["recipe"].get(k), recipe.get(k)) for k in set(meta["recipe"]) | set(recipe)
                if meta["recipe"].get(k) != recipe.get(k)}
        raise InputError(f"The checkpoint in {folder} was made with different settings (saved, now): {diff}. "
                         "Resume with the same settings, or start afresh without --resume.")
    with torch.no_grad():
        lens.weight.copy_(tensors["lens.weight"].to(lens.weight.device))
        lens.bias.copy_(tensors["lens.bias"].to(lens.bias.device))
    state: dict[int, dict[str, Any]] = {}
    for pid, keys in meta["optimizer"]["state"].items():
        st: dict[str, Any] = {}
        for k, scalar in keys:
            if isinstance(scalar, bool):
                t = tensors[f"opt.{pid}.{k}"]
                st[k] = t.reshape(()) if scalar else t
            else:
                st[k] = scalar
        state[int(pid)] = st
    opt.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    gen.set_state(tensors["rng.generator"])
    return int(meta["step"]), int(meta["data_position"]), list(meta.get("loss_history", []))


# -- the trainer ------------------------------------------------------------------------------------
def _batches(corpus: Corpus, tokenizer: Any, seq_len: int, batch: int, skip: int) -> Iterator[torch.Tensor]:
    for chunk in corpus.chunks(tokenizer, seq_len, skip=skip, batch_size=batch):
        yield torch.tensor(chunk, dtype=torch.long)


def _next(it: Iterator[torch.Tensor], corpus: Corpus, position: int, batch: int, seq_len: int) -> torch.Tensor:
    try:
        return next(it)
    except StopIteration:
        raise CorpusExhaustedError(position * seq_len, (position + batch) * seq_len, corpus.describe()) from None


def _progress(total: int, desc: str, enabled: bool, initial: int = 0) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, initial=initial, unit="step", dynamic_ncols=True)


def train_tuned_lens(
    model: HookedModel,
    corpus: Corpus | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    steps: int = 20,
    tokens_per_step: int = 1024,
    seq_len: int = 512,
    lr: float = 1e-3,
    init: str = "lstsq",
    init_tokens: int = 32768,
    ridge: float = 1e-3,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    sites: str | Sequence[str] = "resid_post",
    lens: TunedLens | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress: bool = True,
    seed: int = 0,
    row_block: int = 512,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> TunedLens:
    """Train a tuned lens for ``model`` on ``corpus`` (see the module docstring for the algorithm).

    Data order: the first ``ceil(init_tokens / seq_len)`` chunks feed the closed-form
    init (``init="lstsq"``; ``"zero"`` starts from the logit lens and reads none), the
    following ``steps * tokens_per_step / seq_len`` chunks the KL fine-tune. Running out of
    text raises :class:`~lmscope.lens.corpus.CorpusExhaustedError` (tokens seen vs asked).

    ``callback(step, stats)`` runs after every fine-tune step (after any checkpoint);
    raising from it interrupts training (used by tests). Returns the trained lens with
    ``lmscope.lens.meta["training"]`` describing the run.
    """

    if steps < 0 or tokens_per_step < 1 or seq_len < 2:
        raise InputError(f"Need steps >= 0, tokens_per_step >= 1, seq_len >= 2 (got {steps}, {tokens_per_step}, "
                         f"{seq_len}).")
    if tokens_per_step % seq_len:
        raise InputError(f"tokens_per_step ({tokens_per_step}) must be a multiple of seq_len ({seq_len}).")
    if init not in ("lstsq", "zero"):
        raise InputError(f"init must be 'lstsq' or 'zero', got {init!r}.")
    if model.n_ctx is not None and seq_len > model.n_ctx:
        raise InputError(f"seq_len {seq_len} exceeds the model's context window of {model.n_ctx}.")
    if resume and checkpoint_dir is None:
        raise InputError("resume=True needs checkpoint_dir (where the interrupted run saved its checkpoints).")
    corpus = as_corpus(corpus)
    tokenizer = model_tokenizer(model)
    lens = lens if lens is not None else TunedLens(model, sites=sites)
    readings = list(lens.readings)
    final_idx = _final_reading(model, readings)
    per_step = tokens_per_step // seq_len
    n_init = math.ceil(init_tokens / seq_len) if init == "lstsq" else 0
    recipe = {"steps": steps, "tokens_per_step": tokens_per_step, "seq_len": seq_len, "lr": lr, "init": init,
              "init_tokens": init_tokens if init == "lstsq" else 0, "ridge": ridge, "weight_decay": weight_decay,
              "grad_clip": grad_clip, "readings": readings, "seed": seed, "corpus": list(corpus.sources),
              "split": corpus.split, "fingerprint": model.fingerprint()["unembed_sha256"]}
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None

    params = [lens.weight, lens.bias]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / max(1, steps)))
    gen = torch.Generator().manual_seed(seed)
    step, position = 0, 0
    history: list[float] = []
    timings: dict[str, float] = {}
    resumed = False
    if resume and ckpt is not None and (ckpt / STATE_JSON).is_file():
        step, position, history = _load_checkpoint(ckpt, lens, opt, gen, recipe)
        sched.last_epoch = step
        for g in opt.param_groups:
            g["lr"] = lr * max(0.0, 1.0 - step / max(1, steps))
        resumed = True
    elif resume:
        warnings.warn(f"resume=True but no checkpoint in {ckpt}; starting from the beginning.", stacklevel=2)

    # 1. closed-form initialisation
    if not resumed and n_init:
        t0 = time.perf_counter()
        stats = LstsqStats(len(readings), model.d_model, device=model.device)
        target_name = f"resid_post.{model.n_layers - 1}"
        names = readings if target_name in readings else readings + [target_name]
        bar = _progress(n_init, "lens init (least squares)", progress)
        it = _batches(corpus, tokenizer, seq_len, 1, 0)
        for k in range(n_init):
            ids = _next(it, corpus, k, 1, seq_len)
            hs, _ = run_readings(model, ids, names)
            stats.update(hs[:len(readings)], hs[names.index(target_name)])
            bar.update(1)
            bar.set_postfix(tok_s=f"{(k + 1) * seq_len / (time.perf_counter() - t0):.0f}")
        bar.close()
        w, b = stats.solve(ridge)
        if final_idx is not None:
            w[final_idx].zero_()
            b[final_idx].zero_()
        with torch.no_grad():
            lens.weight.copy_(w.to(lens.weight.device))
            lens.bias.copy_(b.to(lens.bias.device))
        position = n_init
        timings["init_s"] = time.perf_counter() - t0
        if ckpt is not None and steps > 0:
            _save_checkpoint(ckpt, lens, opt, 0, position, gen, recipe, history)
    elif not resumed:
        position = 0

    # 2. fused KL fine-tune
    train_idx = [i for i in range(len(readings)) if i != final_idx]
    decoder = _Decoder(model)
    t0 = time.perf_counter()
    start_step = step
    if step < steps:
        bar = _progress(steps, "lens fine-tune (KL)", progress, initial=step)
        it = _batches(corpus, tokenizer, seq_len, per_step, position)
        lens.train(True)
        while step < steps:
            ids = _next(it, corpus, position, per_step, seq_len)
            hs, final_logits = run_readings(model, ids, readings)
            p, plogp = target_stats(final_logits)
            del final_logits
            n_tok = p.shape[0]
            opt.zero_grad(set_to_none=True)
            total = torch.zeros((), device=lens.weight.device)
            for i in train_idx:
                total = total + kl_sum(lens, decoder, hs[i], i, p, plogp, row_block)
            loss = total / (n_tok * len(readings))
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            sched.step()
            step += 1
            position += per_step
            history.append(float(loss.detach()))
            el = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(kl=f"{history[-1]:.4f}", tok_s=f"{(step - start_step) * tokens_per_step / el:.0f}")
            if ckpt is not None and checkpoint_every > 0 and (step % checkpoint_every == 0 or step == steps):
                _save_checkpoint(ckpt, lens, opt, step, position, gen, recipe, history)
            if callback is not None:
                callback(step, {"loss": history[-1], "tokens_per_s": (step - start_step) * tokens_per_step / el})
        bar.close()
        lens.train(False)
    timings["finetune_s"] = time.perf_counter() - t0
    lens.meta = dict(lens.meta)
    lens.meta["training"] = {**{k: v for k, v in recipe.items() if k not in ("readings", "fingerprint", "corpus")},
                             "corpus": corpus.describe(),
                             "algorithm": "lstsq-init + fused-KL Adam" if init == "lstsq" else "fused-KL Adam",
                             "final_train_kl": history[-1] if history else None,
                             "tokens": (n_init + steps * per_step) * seq_len, **timings}
    return lens


# -- the default lens -------------------------------------------------------------------------------
#: Recipe of the embedded default lens (SmolLM2 on the offline corpus); a few minutes on 2 CPU cores.
DEFAULT_RECIPE: dict[str, Any] = {"steps": 0, "tokens_per_step": 512, "seq_len": 512, "lr": 1e-3,
                                  "init": "lstsq", "init_tokens": 16384, "ridge": 1e-3}


def _recipe_key(recipe: dict[str, Any], corpus: Corpus, model: HookedModel) -> str:
    # the model itself is checked (tolerantly, across dtypes) by TunedLens.load's fingerprint check
    blob = json.dumps({"recipe": recipe, "corpus": [os.path.basename(s) for s in corpus.sources],
                       "model": [model.arch.name, model.n_layers, model.d_model, model.d_vocab]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def default_lens_dir(model: HookedModel | None = None) -> Path:
    """Cache folder of the default lens (``cache_dir()/lenses/<model>-tuned``)."""
    from lmscope.interventions.defaults import DEFAULT_NAME, cache_dir

    return cache_dir() / "lenses" / f"{DEFAULT_NAME}-tuned"


def default_lens(model: HookedModel | None = None, *, progress: bool = True, retrain: bool = False) -> TunedLens:
    """The default model's tuned lens: loaded from the cache (~1 s), or trained once (a few minutes on CPU)
    on :func:`~lmscope.lens.corpus.default_corpus` and cached atomically.

    A cached lens made with another recipe, corpus or model is retrained.
    """
    from lmscope.interventions import HookedModel

    from .corpus import default_corpus

    if model is None:
        model = HookedModel.default()
    folder = default_lens_dir(model)
    train_corpus = default_corpus("train")
    key = _recipe_key(DEFAULT_RECIPE, train_corpus, model)
    if not retrain and (folder / "config.json").is_file():
        try:
            lens = TunedLens.load(folder, model)
            if lens.meta.get("recipe_key") == key:
                return lens
        except LmscopeError as err:
            warnings.warn(f"Cached default lens in {folder} is unusable ({err}); retraining.", stacklevel=2)
    t0 = time.perf_counter()
    lens = train_tuned_lens(model, train_corpus, progress=progress, **DEFAULT_RECIPE)
    lens.meta["recipe_key"] = key
    lens.meta["corpus"] = train_corpus.describe()
    lens.meta["train_seconds"] = round(time.perf_counter() - t0, 1)
    lens.save(folder)
    return lens
