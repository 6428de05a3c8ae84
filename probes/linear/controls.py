"""Baselines that need a model: the same probe on a randomly initialised copy of the architecture."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel
    from lmscope.interventions.collect import TokenRows

    from .sweep import SweepResult


def random_init_model(model: HookedModel, seed: int = 0) -> HookedModel:
    """The same architecture and tokenizer with freshly initialised weights (HF's own init, seeded).

    Probing it tells how much a probe reads from the token identities and the architecture alone.
    """
    from transformers import AutoModelForCausalLM

    from lmscope.interventions import HookedModel

    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(model.hf_model.config, dtype=model.dtype).to(model.device)
    return HookedModel(hf.eval(), model.tokenizer)


def random_init_sweep(model: HookedModel, prompts: Sequence[Any], labels: Sequence[Any], sites: Sequence[str],
                      positions: TokenRows = "last", seed: int = 0, batch_size: int = 16,
                      **sweep_kwargs: Any) -> SweepResult:
    """:func:`~lmscope.probes.linear.probe_sweep` on a random-init copy of ``model`` (collected in memory)."""
    from lmscope.interventions.collect import collect_rows, rows_of

    from .sweep import probe_sweep

    rand = random_init_model(model, seed)
    names = [s.name for s in model.resolve(list(sites))]
    lengths = [int(n) for n in rand.tokenize(list(prompts)).lengths.tolist()]
    rows = [rows_of(positions[i] if isinstance(positions, list) else positions, n, i) for i, n in enumerate(lengths)]
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in names}
    ids, groups = [], []
    for b in range(0, len(prompts), batch_size):
        vals, tok = collect_rows(rand, list(prompts[b:b + batch_size]), names, rows[b:b + batch_size])
        for s in names:
            parts[s].append(vals[s])
        ids += tok.tolist()
        groups += [b + i for i, r in enumerate(rows[b:b + batch_size]) for _ in r]
    row_labels = [labels[g] for g in groups]
    data = {s: torch.cat(v).numpy() for s, v in parts.items()}
    sweep_kwargs.setdefault("types", ids)
    return probe_sweep(data, row_labels, seed=seed, groups=groups, **sweep_kwargs)
