"""One tuned-lens training run: the lens, its data, recipe and optimiser, and the run's phases in order.

:func:`~lmscope.lens.training.fit.train_tuned_lens` checks the request and builds a :class:`TrainingRun`;
:meth:`TrainingRun.execute` then resumes from a checkpoint or fits the closed-form init, runs the fused-KL
fine-tune, and describes what it did. Data order is fixed by the recipe (``position`` counts chunks read), so a
resumed run reads exactly the chunks an uninterrupted one would.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from lmscope.interventions.collect import run_readings
from lmscope.interventions.distributed import DataParallel
from lmscope.interventions.numbers import float32_clean
from lmscope.interventions.progress import bar_disable

from ..lenses import TunedLens, Unembedding
from ..metrics import target_stats
from .checkpoint import STATE_JSON, Recipe, TrainState, load_checkpoint, save_checkpoint
from .corpus import Corpus, CorpusExhaustedError, model_tokenizer
from .kernels import LstsqStats, kl_sum

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel

Callback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainingRun:
    """One training run: the lens, its data and recipe, the optimiser and where the run stands."""

    lens: TunedLens
    corpus: Corpus
    recipe: Recipe
    ckpt: Path | None
    checkpoint_every: int
    progress: bool
    row_block: int
    callback: Callback | None
    dp: DataParallel = field(default_factory=DataParallel)
    timings: dict[str, float] = field(default_factory=dict)
    model: HookedModel = field(init=False)
    tokenizer: Any = field(init=False)
    params: list[torch.nn.Parameter] = field(init=False)
    opt: torch.optim.Adam = field(init=False)
    sched: torch.optim.lr_scheduler.LambdaLR = field(init=False)
    state: TrainState = field(init=False)

    def __post_init__(self) -> None:
        self.model = self.lens.model
        self.tokenizer = model_tokenizer(self.model)
        self.params = [self.lens.weight, self.lens.bias]
        self.opt = torch.optim.Adam(self.params, lr=self.recipe.lr, weight_decay=self.recipe.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.state = TrainState.fresh(self.recipe.seed)

    def _lr_factor(self, step: int) -> float:
        """Linear decay to 0 over the fine-tune."""
        return max(0.0, 1.0 - step / max(1, self.recipe.steps))

    @property
    def final_index(self) -> int | None:
        """Index of the model's last ``resid_post`` among the readings (its translator stays zero)."""
        last = f"resid_post.{self.model.n_layers - 1}"
        return self.recipe.readings.index(last) if last in self.recipe.readings else None

    # -- phases ------------------------------------------------------------------------------------
    def execute(self, resume: bool) -> dict[str, Any]:
        """The whole run: the last checkpoint (``resume``) or the closed-form init, then the fine-tune; returns
        :meth:`describe`."""
        resumed = resume and self.resume()
        if not resumed and self.recipe.init_chunks:
            self.closed_form_init()
        self.finetune()
        return self.describe()

    def resume(self) -> bool:
        """Load the last checkpoint if there is one (True), else warn and start afresh (False)."""
        assert self.ckpt is not None
        if not (self.ckpt / STATE_JSON).is_file():
            warnings.warn(f"resume=True but no checkpoint in {self.ckpt}; starting from the beginning.",
                          stacklevel=4)  # the caller of train_tuned_lens
            return False
        self.state = load_checkpoint(self.ckpt, self.lens, self.opt, self.recipe)
        self.sched.last_epoch = self.state.step
        for g in self.opt.param_groups:
            g["lr"] = self.recipe.lr * self._lr_factor(self.state.step)
        return True

    def closed_form_init(self) -> None:
        """Ridge-regression translators from ``init_chunks`` frozen forwards (then a first checkpoint)."""
        t0 = time.perf_counter()
        n_init, seq_len, readings = self.recipe.init_chunks, self.recipe.seq_len, self.recipe.readings
        stats = LstsqStats(len(readings), self.model.d_model, device=self.model.device)
        target_name = f"resid_post.{self.model.n_layers - 1}"
        names = readings if target_name in readings else readings + [target_name]
        bar = _progress(n_init, "lens init (least squares)", self.progress)
        batches = self._batches(1, 0)
        for k in range(n_init):
            ids = self._next(batches, k, 1)
            if self.dp.owns(k):  # chunks are dealt round-robin over processes
                hs, _ = run_readings(self.model, ids, names)
                stats.update(hs[:len(readings)], hs[names.index(target_name)])
            bar.update(1)
            bar.set_postfix(tok_s=f"{(k + 1) * seq_len / (time.perf_counter() - t0):.0f}")
        bar.close()
        self.dp.all_reduce_sum_(stats.zz, stats.zy)
        self._set_translators(*stats.solve(self.recipe.ridge))
        self.state.position = n_init
        self.timings["init_s"] = time.perf_counter() - t0
        if self.ckpt is not None and self.recipe.steps > 0:
            self._save()

    def _set_translators(self, w: torch.Tensor, b: torch.Tensor) -> None:
        if self.final_index is not None:
            w[self.final_index].zero_()
            b[self.final_index].zero_()
        with torch.no_grad():
            self.lens.weight.copy_(w.to(self.lens.weight.device))
            self.lens.bias.copy_(b.to(self.lens.bias.device))

    def finetune(self) -> None:
        """Fused-KL Adam steps from the current state to ``recipe.steps`` (checkpointing as asked)."""
        t0 = time.perf_counter()
        state, steps, per_step = self.state, self.recipe.steps, self.recipe.chunks_per_step
        start = state.step
        if state.step < steps:
            bar = _progress(steps, "lens fine-tune (KL)", self.progress, initial=state.step)
            batches = self._batches(per_step, state.position)
            unembedding = Unembedding(self.model)
            self.lens.train(True)
            while state.step < steps:
                loss = self._kl_step(self._next(batches, state.position, per_step), unembedding)
                state.step += 1
                state.position += per_step
                state.loss_history.append(loss)
                tok_s = (state.step - start) * self.recipe.tokens_per_step / (time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix(kl=f"{loss:.4f}", tok_s=f"{tok_s:.0f}")
                self._maybe_checkpoint()
                if self.callback is not None:
                    self.callback(state.step, {"loss": loss, "tokens_per_s": tok_s})
            bar.close()
            self.lens.train(False)
        self.timings["finetune_s"] = time.perf_counter() - t0

    def _kl_step(self, ids: torch.Tensor, unembedding: Unembedding) -> float:
        """One optimiser step on the mean KL over tokens and readings of one batch; returns that loss."""
        readings = self.recipe.readings
        start, stop = self.dp.split(ids.shape[0])  # this process's rows of the batch
        hs, final_logits = run_readings(self.model, ids[start:stop], readings)
        target = target_stats(final_logits)
        del final_logits
        self.opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.lens.weight.device)
        for i in range(len(readings)):
            if i != self.final_index:
                total = total + kl_sum(self.lens, unembedding, hs[i], i, target, self.row_block)
        loss = total / (target.p.shape[0] * self.dp.world_size * len(readings))  # mean over every process's tokens
        loss.backward()
        self.dp.all_reduce_sum_(*(p.grad for p in self.params if p.grad is not None))
        loss = loss.detach().clone()
        self.dp.all_reduce_sum_(loss)
        if self.recipe.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.recipe.grad_clip)
        self.opt.step()
        self.sched.step()
        return float(loss.detach())

    def _maybe_checkpoint(self) -> None:
        every, step = self.checkpoint_every, self.state.step
        if self.ckpt is not None and every > 0 and (step % every == 0 or step == self.recipe.steps):
            self._save()

    def _save(self) -> None:
        """Checkpoint (rank 0 writes; every process waits until it is on disk)."""
        assert self.ckpt is not None
        if self.dp.is_main:
            save_checkpoint(self.ckpt, self.lens, self.opt, self.state, self.recipe)
        self.dp.barrier()

    # -- data --------------------------------------------------------------------------------------
    def _batches(self, batch: int, skip: int) -> Iterator[torch.Tensor]:
        for chunk in self.corpus.chunks(self.tokenizer, self.recipe.seq_len, skip=skip, batch_size=batch):
            yield torch.tensor(chunk, dtype=torch.long)

    def _next(self, batches: Iterator[torch.Tensor], position: int, batch: int) -> torch.Tensor:
        try:
            return next(batches)
        except StopIteration:
            seq_len = self.recipe.seq_len
            raise CorpusExhaustedError(position * seq_len, (position + batch) * seq_len,
                                       self.corpus.describe()) from None

    def describe(self) -> dict[str, Any]:
        """``lens.meta["training"]``: the recipe (without readings/fingerprint), corpus, timings (0.01 s), final loss
        (float32, without float64 noise)."""
        recipe = self.recipe.as_dict()
        history = self.state.loss_history
        return {**{k: v for k, v in recipe.items() if k not in ("readings", "fingerprint", "corpus")},
                "corpus": self.corpus.describe(),
                "algorithm": "lstsq-init + fused-KL Adam" if self.recipe.init == "lstsq" else "fused-KL Adam",
                "final_train_kl": float32_clean(history[-1]) if history else None,
                "tokens": (self.recipe.init_chunks + self.recipe.steps * self.recipe.chunks_per_step)
                * self.recipe.seq_len, **{k: round(v, 2) for k, v in self.timings.items()}}


def _progress(total: int, desc: str, enabled: bool, initial: int = 0) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=bar_disable(enabled), initial=initial, unit="step",
                dynamic_ncols=True)
