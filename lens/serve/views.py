"""The light workbench views: one library call each, under the request's interventions, answered at once.

- lens cell: :func:`lmscope.lens.changes.layer_change` (top-k, promoted and suppressed tokens);
- attention: the ``attn_pattern.L`` (and ``attn_scores.L``) of one layer from one forward, and per-head summary
  scores (:func:`lmscope.probes.attribution.pattern_scores` on that pattern, and
  :func:`lmscope.probes.attribution.head_scores_by_kind` on :func:`~lmscope.probes.attribution.repeated_tokens`,
  computed once per set of interventions);
- attribution: :func:`lmscope.probes.attribution.attribute`;
- neurons: :func:`lmscope.probes.attribution.neuron_attribution`.

Each runs inside ``state.view(...)``: one of the ``max_concurrent`` request slots and a session of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions import Cache
from lmscope.interventions.errors import InputError

from .schema_views import (
    AttentionAnswer,
    AttentionRequest,
    AttributionAnswer,
    AttributionRequest,
    CellAnswer,
    CellRequest,
    NeuronsAnswer,
    NeuronsRequest,
    nulls,
)

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel

    from .active import Active
    from .state import ServerState

#: the repeated random-token sequences induction scores are read on: ``repeated_tokens(model, **REPEATED)``
REPEATED = {"length": 20, "batch": 4, "seed": 0}
#: sets of interventions whose repeated-token scores are kept
MEMO_SIZE = 64


def token_names(model: HookedModel, ids: list[int]) -> list[str]:
    tok = model.tokenizer
    return [tok.decode([i]) if tok is not None else str(i) for i in ids]


def one_prompt(state: ServerState, prompt: Any, limit: int | None = None) -> list[int]:
    """The token ids of one prompt, within the view's token limit (an InputError naming it otherwise)."""
    if isinstance(prompt, str) and state.model.tokenizer is None:
        raise InputError("This server's model has no tokenizer: send token-id lists.")
    ids = state.model.tokenize([prompt]).input_ids[0].tolist()
    limit = state.limits.max_view_tokens if limit is None else limit
    if len(ids) > limit:
        raise InputError(f"The prompt has {len(ids)} tokens; this view's limit is {limit}.")
    return ids


def check_layer(state: ServerState, layer: int) -> int:
    n = state.model.n_layers
    if not -n <= layer < n:
        raise InputError(f"Layer {layer} is out of range: this model has {n} layers (0..{n - 1} or -{n}..-1).")
    return layer % n


def cell_view(state: ServerState, req: CellRequest) -> CellAnswer:
    from lmscope.lens.changes import layer_change

    lens = state.lens(req.lens)
    one_prompt(state, req.prompt)
    with state.view(req.interventions, req.prompt) as active:
        change = layer_change(lens, req.prompt, req.reading, req.position, req.top_k)
    return CellAnswer(lens=lens.describe(), change=change.to_dict(), active=active.labels)


def repeated_scores(state: ServerState, active: Active) -> dict[str, torch.Tensor]:
    """Every head's scores on the repeated random tokens, once per set of interventions (call inside the view's
    session)."""
    from lmscope.probes.attribution import head_scores_by_kind, repeated_tokens

    key = ("repeated", active.key)
    with state.memo_lock:
        found = state.memo.get(key)
    if found is None:
        found = head_scores_by_kind(state.model, repeated_tokens(state.model, **REPEATED))
        with state.memo_lock:
            if len(state.memo) >= MEMO_SIZE:  # bounded: the oldest set of interventions goes first
                state.memo.pop(next(iter(state.memo)))
            state.memo[key] = found
    return dict(found)


def attention_view(state: ServerState, req: AttentionRequest) -> AttentionAnswer:
    from lmscope.probes.attribution import pattern_scores
    from lmscope.probes.attribution.heads import KINDS

    model = state.model
    for kind in ("attn_pattern",) + (("attn_scores",) if req.scores else ()):
        if kind not in model.available_kinds:
            raise InputError(f"This model does not expose {kind} (its attention computes it inline, e.g. Falcon "
                             "with ALiBi): no attention view.")
    layer = check_layer(state, req.layer)
    ids = one_prompt(state, req.prompt)
    sites = [f"attn_pattern.{layer}"] + ([f"attn_scores.{layer}"] if req.scores else [])
    with state.view(req.interventions, req.prompt) as active:
        cache = model.run([req.prompt], [Cache(sites)]).cache
        repeated = repeated_scores(state, active)
    pattern = cache[sites[0]][0].float().cpu()
    ids_t = torch.tensor(ids)
    on_prompt = {kind: nulls(pattern_scores(pattern, ids_t, kind).tolist()) for kind in KINDS}
    scores = nulls(cache[sites[1]][0].float().cpu().tolist()) if req.scores else None
    return AttentionAnswer(layer=layer, tokens=token_names(model, ids), n_heads=model.n_heads,
                           pattern=pattern.tolist(), scores=scores, head_scores=on_prompt,
                           repeated_scores={k: nulls(v[layer].tolist()) for k, v in repeated.items()},
                           active=active.labels)


def attribution_view(state: ServerState, req: AttributionRequest) -> AttributionAnswer:
    from lmscope.probes.attribution import attribute

    one_prompt(state, req.prompt)
    with state.view(req.interventions, req.prompt) as active:
        a = attribute(state.model, req.prompt, req.target, req.contrast, per_position=req.per_position)
    return AttributionAnswer(
        target=a.target, contrast=a.contrast, labels=list(a.labels), tokens=a.tokens, logit=a.logit, total=a.total,
        embed=a.embed, constant=a.constant, attn=nulls(a.attn.tolist()), attn_bias=nulls(a.attn_bias.tolist()),
        mlp=nulls(a.mlp.tolist()), heads=nulls(a.heads.tolist()),
        head_positions=None if a.head_positions is None else nulls(a.head_positions.tolist()),
        top=a.top(12), notes=a.notes, active=active.labels)


def neurons_view(state: ServerState, req: NeuronsRequest) -> NeuronsAnswer:
    from lmscope.probes.attribution import neuron_attribution

    one_prompt(state, req.prompt)
    layer = check_layer(state, req.layer)
    with state.view(req.interventions, req.prompt) as active:
        n = neuron_attribution(state.model, req.prompt, layer, req.target, req.contrast)
    return NeuronsAnswer(neurons=n.to_dict(req.top_k), active=active.labels)
