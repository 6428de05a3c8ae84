"""Training and evaluating tuned lenses: the fit (closed-form init + fused-KL fine-tune) and the cached default
lens in ``fit.py``, one run's phases in ``loop.py``, its two kernels in ``kernels.py``, resumable checkpoints
(``Recipe``, ``TrainState``) in ``checkpoint.py``, text streaming in ``corpus.py``, the offline default corpus in
``offline.py``, per-layer evaluation in ``evaluate.py``, and the ``train-lens``/``eval-lens`` commands in
``cli.py``.

Imported lazily (PEP 562): ``from lmscope.lens.training import train_tuned_lens`` loads torch only then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmscope.interventions.lazy import lazy_exports

if TYPE_CHECKING:
    from .corpus import Corpus
    from .evaluate import evaluate_lens
    from .fit import default_lens, train_tuned_lens
    from .offline import default_corpus

_LAZY = {"Corpus": ".corpus", "default_corpus": ".offline", "evaluate_lens": ".evaluate", "default_lens": ".fit",
         "train_tuned_lens": ".fit"}
__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
