"""What a lens fit will do and roughly cost, and which settings make two training runs the same kind of run.

A fit says in one line, before it starts, what it will fit and about how long that takes (the rates of the cost
table in ``docs/costs.md``: SmolLM2-135M on 2 idle CPU cores). ``train-lens`` replaces a lens at ``--out`` only
when that lens came from the same kind of run (the settings in :data:`RUN_KEYS`, as ``lens.meta["training"]``
records them): a lens from another run (say the fine-tuned lens of a 15-minute run, under a ``--steps 0`` run)
is refused without ``--force``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Tokens per second of the closed-form fit and of the KL fine-tune, SmolLM2-135M on 2 idle CPU cores
#: (docs/costs.md: the default lens's 16,384 tokens fitted in 40 s in ``make demo``; the defaults of ``train-lens``
#: took 877 s, of which 20 KL steps of 1,024 tokens at ~38 s each).
FIT_TOKENS_PER_S = 400.0
KL_TOKENS_PER_S = 27.0
#: The settings that make two training runs the same kind of run (keys of ``lens.meta["training"]``).
RUN_KEYS = ("steps", "tokens_per_step", "seq_len", "lr", "init", "init_tokens", "ridge", "corpus")


def run_settings(steps: int, tokens_per_step: int, seq_len: int, lr: float, init: str, init_tokens: int,
                 ridge: float, corpus: str) -> dict[str, Any]:
    """The :data:`RUN_KEYS` of a run, as its lens will record them (``init_tokens`` is 0 for ``init="zero"``)."""
    return {"steps": steps, "tokens_per_step": tokens_per_step, "seq_len": seq_len, "lr": lr, "init": init,
            "init_tokens": init_tokens if init == "lstsq" else 0, "ridge": ridge, "corpus": corpus}


def rough_duration(seconds: float) -> str:
    """``"~40 s"``, ``"~2 min"``, ``"~15 min"``: a duration rounded the way an estimate deserves."""
    if seconds < 90:
        return f"~{max(10, round(seconds, -1)):.0f} s"
    return f"~{round(seconds / 60):.0f} min"


def estimate_seconds(init_tokens: int, steps: int = 0, tokens_per_step: int = 0) -> float:
    """Seconds a fit takes at the reference rates (SmolLM2-135M, 2 idle CPU cores)."""
    return init_tokens / FIT_TOKENS_PER_S + steps * tokens_per_step / KL_TOKENS_PER_S


def announce(settings: dict[str, Any]) -> str:
    """One line: what the run fits, on what, and about how long it takes on the reference machine."""
    fit = estimate_seconds(settings["init_tokens"])
    tune = estimate_seconds(0, settings["steps"], settings["tokens_per_step"])
    what = (f"a closed-form fit on {settings['init_tokens']:,} tokens" if settings["init"] == "lstsq"
            else "zero translators (the logit lens)")
    if settings["steps"]:
        what += f", then {settings['steps']} KL fine-tune steps of {settings['tokens_per_step']:,} tokens"
    cheaper = "" if not settings["steps"] else f"; --steps 0 stops after the fit ({rough_duration(fit)})"
    return (f"lmscope: train-lens fits {what} of {settings['corpus']}: {rough_duration(fit + tune)} for "
            f"SmolLM2-135M on 2 idle CPU cores, longer under load or for a larger model{cheaper}.")


def held_run(folder: str | Path) -> dict[str, Any] | None:
    """The :data:`RUN_KEYS` recorded by the lens in ``folder`` (None: not readable, or not made by a training run)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    training = config.get("meta", {}).get("training") if isinstance(config, dict) else None
    if not isinstance(training, dict):
        return None
    return {k: training.get(k) for k in RUN_KEYS}
