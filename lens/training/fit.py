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

The run's phases live in :mod:`~lmscope.lens.training.loop`, the two kernels in
:mod:`~lmscope.lens.training.kernels`, checkpoints (a :class:`Recipe` and a :class:`TrainState`, saved every
``checkpoint_every`` steps) in :mod:`~lmscope.lens.training.checkpoint`.
``resume=True`` continues from the last checkpoint and ends exactly where an uninterrupted run ends
(same data order, same arithmetic).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from lmscope.interventions.cache_folder import check_cache_writable
from lmscope.interventions.distributed import DataParallel
from lmscope.interventions.errors import InputError, LmscopeError

from ..lenses import TunedLens
from .checkpoint import Recipe
from .corpus import Corpus, as_corpus
from .loop import Callback, TrainingRun
from .offline import corpus_domains, default_corpus

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel


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
    callback: Callback | None = None,
    data_parallel: DataParallel | None = None,
) -> TunedLens:
    """Train a tuned lens for ``model`` on ``corpus`` (see the module docstring for the algorithm).

    Data order: the first ``ceil(init_tokens / seq_len)`` chunks feed the closed-form
    init (``init="lstsq"``; ``"zero"`` starts from the logit lens and reads none), the
    following ``steps * tokens_per_step / seq_len`` chunks the KL fine-tune. Running out of
    text raises :class:`~lmscope.lens.training.corpus.CorpusExhaustedError` (tokens seen vs asked).

    Cost of the defaults (SmolLM2-135M, 2-core CPU; the table of costs is ``docs/costs.md``): 877 s in all,
    of which 20 KL steps of 1,024 tokens at ~38 s each (~27 tokens/s: every reading projects every token onto
    the whole vocabulary). The fine-tune bought 12% held-out KL (2.14 -> 1.89 nats). ``steps=0`` stops after
    the closed-form fit, the minutes-long part at most.

    ``callback(step, stats)`` runs after every fine-tune step (after any checkpoint);
    raising from it interrupts training (used by tests). Returns the trained lens with
    ``lens.meta["training"]`` describing the run.

    **Several processes** (``torchrun --nproc_per_node=N`` or ``accelerate launch``; ``data_parallel``
    defaults to :meth:`DataParallel.from_env`): the closed-form chunks are dealt round-robin and their
    statistics all-reduced; each fine-tune batch is split evenly over the processes (``tokens_per_step /
    seq_len`` must be a multiple of N) and the gradients all-reduced, so every process holds the lens one
    process would train on the same tokens (up to float summation order). Rank 0 writes checkpoints and
    shows progress; resume works the same.
    """
    dp = data_parallel if data_parallel is not None else DataParallel.from_env()
    _check_settings(model, dp, steps, tokens_per_step, seq_len, init, resume, checkpoint_dir)
    corpus = as_corpus(corpus)
    lens = lens if lens is not None else TunedLens(model, sites=sites)
    recipe = _recipe(model, lens, corpus, init, init_tokens, steps=steps, tokens_per_step=tokens_per_step,
                     seq_len=seq_len, lr=lr, ridge=ridge, weight_decay=weight_decay, grad_clip=grad_clip, seed=seed)
    run = TrainingRun(lens, corpus, recipe, Path(checkpoint_dir) if checkpoint_dir is not None else None,
                      checkpoint_every, progress and dp.is_main, row_block, callback, dp=dp)
    training = run.execute(resume)
    lens.meta = {**lens.meta, "training": training}
    return lens


def _recipe(model: HookedModel, lens: TunedLens, corpus: Corpus, init: str, init_tokens: int, **knobs: Any) -> Recipe:
    """The run's :class:`Recipe`: the knobs as given, the init's token budget (none for ``"zero"``), the lens's
    readings, the corpus's sources and split, and the model's unembedding fingerprint (so a resume refuses a
    checkpoint of another recipe, corpus, lens or model)."""
    return Recipe(init=init, init_tokens=init_tokens if init == "lstsq" else 0, readings=list(lens.readings),
                  corpus=list(corpus.sources), split=corpus.split, fingerprint=model.fingerprint()["unembed_sha256"],
                  **knobs)


def _check_settings(model: HookedModel, dp: DataParallel, steps: int, tokens_per_step: int, seq_len: int, init: str,
                    resume: bool, checkpoint_dir: Any) -> None:
    """Refuse a recipe that cannot run, before any text is read: bad sizes, an unknown init, a sequence longer
    than the model's context, a resume without checkpoints, a step that ``dp``'s processes cannot share evenly."""
    if dp.enabled:
        dp.split(tokens_per_step // max(1, seq_len), "sequences per fine-tune step", require_even=True)
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


# -- the default lens -------------------------------------------------------------------------------
#: Recipe of the embedded default lens (SmolLM2 on the offline corpus); a few minutes on 2 CPU cores.
DEFAULT_RECIPE: dict[str, Any] = {"steps": 0, "tokens_per_step": 512, "seq_len": 512, "lr": 1e-3,
                                  "init": "lstsq", "init_tokens": 16384, "ridge": 1e-3}


def _recipe_key(recipe: dict[str, Any], corpus: Corpus, model: HookedModel) -> str:
    # the model's weights choose the folder (default_lens_dir) and are checked again by TunedLens.load;
    # the corpus digest changes with its files (a new default corpus refits every cached default lens)
    blob = json.dumps({"recipe": recipe, "corpus": corpus.digest(),
                       "model": [model.arch.name, model.n_layers, model.d_model, model.d_vocab]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _settings(recipe: dict[str, Any] | None) -> dict[str, Any]:
    """:data:`DEFAULT_RECIPE` with ``recipe``'s entries over it; an entry it does not have is an InputError."""
    settings = {**DEFAULT_RECIPE, **(recipe or {})}
    unknown = sorted(set(settings) - set(DEFAULT_RECIPE))
    if unknown:
        raise InputError(f"Unknown default-lens recipe entries {unknown}; allowed: {sorted(DEFAULT_RECIPE)}.")
    return settings


def default_lens_dir(model: HookedModel | None = None, recipe: dict[str, Any] | None = None) -> Path:
    """Cache folder of ``model``'s default lens made with ``recipe`` (entries over :data:`DEFAULT_RECIPE`):
    ``cache_dir()/lenses/<model>-<weights hash>-tuned`` for the default recipe, ``...-tuned-<recipe hash>`` for any
    other.

    Every model gets its own folder (keyed by :func:`~lmscope.interventions.fingerprint.model_cache_key`), so
    fitting the default lens of one model never touches another's; every recipe its own too, so a quick look with a
    smaller recipe never overwrites (or forces a refit of) the default one, whose folder keeps its name (caches
    made before recipes had folders load as they are). ``None``: the default model (loaded).
    """
    from lmscope.interventions import HookedModel
    from lmscope.interventions.defaults import cache_dir
    from lmscope.interventions.fingerprint import model_cache_key

    settings = _settings(recipe)
    if model is None:
        model = HookedModel.default()
    name = f"{model_cache_key(model)}-tuned"
    if settings != DEFAULT_RECIPE:
        name += "-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "lenses" / name


def default_lens(model: HookedModel | None = None, *, progress: bool = True, retrain: bool = False,
                 recipe: dict[str, Any] | None = None) -> TunedLens:
    """``model``'s default tuned lens (default: the default model's): loaded from the cache (~1 s), or fitted
    once (a few minutes on CPU) on :func:`~lmscope.lens.training.offline.default_corpus` and cached atomically in
    :func:`default_lens_dir` -- a folder of its own for every model and recipe.

    ``recipe`` overrides entries of :data:`DEFAULT_RECIPE` (e.g. smaller ``init_tokens`` for a quick look); each
    recipe is cached in its own folder, so calls with different recipes never refit or overwrite each other's lens.
    The cached lens also records a key of the recipe, the corpus (names and sizes of its files) and the model, so a
    lens made on another corpus is refitted in place. ``progress`` also prints, before a fit, two lines on stderr
    saying what is fitted, why and where it is cached.
    """
    from lmscope.interventions import HookedModel

    settings = _settings(recipe)
    if model is None:
        model = HookedModel.default()
    folder = default_lens_dir(model, settings)
    train_corpus = default_corpus("train")
    key = _recipe_key(settings, train_corpus, model)
    if not retrain and (folder / "config.json").is_file():
        try:
            lens = TunedLens.load(folder, model)
            if lens.meta.get("recipe_key") == key:
                return lens
        except LmscopeError as err:
            warnings.warn(f"Cached default lens in {folder} is unusable ({err}); refitting it.", stacklevel=2)
    check_cache_writable(folder)  # a read-only cache fails now, not after minutes of fitting
    domains = corpus_domains(train_corpus)
    if progress:
        _announce(settings, domains, folder, model)
    t0 = time.perf_counter()
    lens = train_tuned_lens(model, train_corpus, progress=progress, **settings)
    lens.meta["recipe_key"] = key
    lens.meta["corpus"] = train_corpus.describe()
    lens.meta["corpus_domains"] = domains
    lens.meta["train_seconds"] = round(time.perf_counter() - t0, 1)
    lens.save(folder)
    return lens


def _announce(settings: dict[str, Any], domains: list[str], folder: Path, model: HookedModel) -> None:
    """Say once, before the first fit, what is fitted, why and where it goes (the progress bar alone does not)."""
    import sys

    from lmscope.interventions.fingerprint import model_cache_key

    from .runplan import estimate_seconds, rough_duration

    took = rough_duration(estimate_seconds(settings["init_tokens"], settings["steps"], settings["tokens_per_step"]))
    which = "" if settings == DEFAULT_RECIPE else "with this recipe "
    print(f"lmscope: fitting the default tuned lens of {model_cache_key(model)} {which}(once per model; "
          f"{settings['init_tokens']:,} tokens of {', '.join(domains) or 'offline'} English, least squares; "
          f"{took} for SmolLM2-135M on 2 idle CPU cores, minutes under load or for a larger model):\n"
          f"lmscope: it reads each layer's prediction better than the logit lens; cached in {folder}",
          file=sys.stderr, flush=True)
