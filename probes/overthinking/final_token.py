"""Label probabilities at each prompt's final token under head ablations: the final-token runner.

Only the final token's computation changes under the ablations of :mod:`.ablation`, so
:func:`final_label_probs` runs each prompt batch's prefix once, keeps its key/value cache, and re-runs only the
final token. With ``batch_configs=False`` (the reference loop) it does so once per configuration, rolling the
cache back after each. With ``batch_configs=True`` (the default) the configurations run together, and the
numbers equal the loop's up to float32 rounding of the larger forward:

- the final token runs once unablated, which gives the no-ablation configurations and the residual entering
  every layer (``resid_pre``);
- the ablating configurations are sorted by their earliest ablated layer and split into groups of up to
  ``config_chunk``; each group copies the prefix cache once and runs one forward that starts at the group's
  earliest layer from that residual (a group of late-layer heads skips most of the network);
- within a group the configurations lie along the *query* axis (:class:`~.ablation.ColumnHeadAblation`):
  each prompt's final token appears ``C`` times at the same position, a 4D mask lets copy ``c`` see the
  prefix and itself only, and column ``c`` ablates configuration ``c``, so the ``C`` copies share one prefix
  cache instead of ``C`` copies of it (on CPU those copies cost more than the arithmetic);
- the unembedding is cut to the label rows (:func:`label_head`): only the label probabilities are read, and on
  a 262k vocabulary that matrix costs more than the rest of a small model's token forward.

Where reusing the prefix cache for more than one new token is not exact (a sliding window the prompts reach,
ALiBi), each group instead runs as rows over every layer (:class:`~.ablation.RowHeadAblation`): the cache is
repeated per configuration, rows = prompts x configurations. Everything runs through private shells
(:func:`lmscope.interventions.partial.partial_model`) and context-local hooks: the shared model is never
changed, so other threads may use it meanwhile.
"""

from __future__ import annotations

import copy
import functools
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from lmscope.interventions.base import Intervention
from lmscope.interventions.errors import InputError
from lmscope.interventions.kv import cache_kwarg, output_cache
from lmscope.interventions.local import local_hooks, shell_unsupported
from lmscope.interventions.partial import partial_forward_unsupported, partial_model
from lmscope.interventions.progress import bar_disable

from .ablation import AblationSpec, ColumnHeadAblation, RowHeadAblation, check_method, head_ablation
from .tasks import batches

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel

    from .tasks import PromptSet


def _as_spec(name: str, value: Any) -> AblationSpec | None:
    """A config value as an :data:`AblationSpec`, or ``None`` for a callable (only the loop runs those)."""
    if callable(value):
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[1], str):
        return (list(value[0]), check_method(value[1], f"Config {name!r}: "))
    raise InputError(f"Config {name!r} must be (heads, method) with method one of zero, mean, qkv, or a "
                     f"callable returning interventions; got {value!r}.")


def _make(spec: AblationSpec | None, value: Any) -> list[Intervention]:
    if spec is None:
        return list(value())
    return head_ablation(spec[0], spec[1]) if len(spec[0]) else []


@torch.no_grad()
def final_label_probs(model: HookedModel, prompts: PromptSet,
                      configs: dict[str, AblationSpec | Callable[[], list[Intervention]]], *, batch_size: int = 8,
                      progress: bool = True, batch_configs: bool = True,
                      config_chunk: int = 32) -> dict[str, torch.Tensor]:
    """Label probabilities (renormalised) at each prompt's final token under each config: name ->
    ``[n_prompts, n_labels]``. The prefix runs once per batch.

    A config is ``(heads, method)`` (:data:`~.ablation.AblationSpec`; ``((), "zero")`` for no ablation) or a
    callable returning interventions. With ``batch_configs`` (and only specs) the final token runs once for up
    to ``config_chunk`` configurations together (see the module docstring: in the column layout each group
    copies the prefix cache once and adds ``config_chunk`` final-token columns to it; in the row fallback the
    cache is repeated per configuration, so memory grows with ``config_chunk * batch_size``); otherwise, or
    with any callable, each config re-runs the final token on its own (the reference loop).
    """
    specs = {name: _as_spec(name, v) for name, v in configs.items()}
    if config_chunk < 1:
        raise InputError(f"config_chunk must be at least 1, got {config_chunk}.")
    if batch_configs and all(s is not None for s in specs.values()):
        return _batched_label_probs(model, prompts, specs, batch_size, progress, config_chunk)  # type: ignore[arg-type]
    makers: dict[str, Callable[[], list[Intervention]]] = {
        n: functools.partial(_make, s, configs[n]) for n, s in specs.items()}
    return _looped_label_probs(model, prompts, makers, batch_size, progress)


def _prefix(model: HookedModel, rows: Sequence[int], prompts: PromptSet) -> tuple[Any, Any]:
    """The tokenized batch of ``rows`` and the key/value cache of everything but each prompt's final token."""
    batch = model.tokenize([prompts.ids[i] for i in rows])
    ids, mask, pos = batch.input_ids, batch.attention_mask, batch.position_ids
    pre = model.hf_model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
                         use_cache=True, logits_to_keep=1)
    return batch, output_cache(pre)


def label_head(model: HookedModel, label_ids: torch.Tensor) -> nn.Module | None:
    """A ``Linear`` holding only the ``label_ids`` rows of the model's unembedding (its logits are the labels'
    logits, in that order), for :func:`lmscope.interventions.partial.partial_model` to run privately; None
    where that is not possible (an unembedding that is not a plain ``Linear``, weights on the meta device, a
    model a private shell cannot run). Softcapping and logit scales act per logit, so they still apply."""
    mod = model.unembed
    weight = getattr(mod, "weight", None)
    if type(mod) is not nn.Linear or weight is None or weight.device.type == "meta" or \
            shell_unsupported(model.hf_model, [model.arch.unembed]) is not None:
        return None
    small = nn.Linear(weight.shape[1], int(label_ids.numel()), bias=mod.bias is not None, device=weight.device,
                      dtype=weight.dtype)
    with torch.no_grad():
        idx = label_ids.to(weight.device)
        small.weight.copy_(weight[idx])
        if mod.bias is not None:
            small.bias.copy_(mod.bias[idx])
    return small


def _label_probs(logits: torch.Tensor, label_idx: torch.Tensor, restricted: bool) -> torch.Tensor:
    """Renormalised label probabilities from last-token logits (already the label logits when restricted;
    checked by width, so a model whose forward bypasses its unembedding module still reads the right ones)."""
    if not (restricted and logits.shape[-1] == label_idx.numel()):
        logits = logits[:, label_idx]
    return logits.float().softmax(-1)


def _grab_input(store: list[torch.Tensor], module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Forward pre-hook: keep the hidden states entering the layer (``resid_pre``)."""
    store.append(args[0] if args else kwargs["hidden_states"])


def _first_layer(spec: AblationSpec, n_layers: int) -> int:
    """The earliest layer a configuration ablates (``n_layers`` for none)."""
    return min((int(layer) % n_layers for layer, _ in spec[0]), default=n_layers)


def _column_mask(mask: torch.Tensor, n_conf: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive 4D mask ``[prompts, 1, C, prefix + C]`` of the column layout: copy ``c`` of a final token
    sees the prompt's real prefix tokens and itself."""
    prefix = mask[:, :-1].bool()
    b, p = prefix.shape
    allowed = torch.zeros(b, n_conf, p + n_conf, dtype=torch.bool, device=mask.device)
    allowed[:, :, :p] = prefix[:, None, :]
    diag = torch.arange(n_conf, device=mask.device)
    allowed[:, diag, p + diag] = True
    return torch.zeros(b, 1, n_conf, p + n_conf, dtype=dtype, device=mask.device).masked_fill(
        ~allowed[:, None], torch.finfo(dtype).min)


@dataclass
class _FinalToken:
    """The final-token forwards of the batched runner on one prompt batch (``batch`` and its prefix cache
    ``past``), each through a private shell with the label-only ``head`` (None: the model's own)."""

    model: HookedModel
    label_idx: torch.Tensor
    kw: str  # the forward's cache keyword
    head: nn.Module | None
    batch: Any
    past: Any

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return _label_probs(logits, self.label_idx, self.head is not None)

    def clean(self, grab_resid: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Unablated label probabilities ``[prompts, labels]`` (on the CPU) and, with ``grab_resid``, the
        residual entering each layer."""
        b = self.batch
        resid: list[torch.Tensor] = []
        layers = [self.model.layer_module(i) for i in range(self.model.n_layers)]
        grab = local_hooks([(layer, functools.partial(_grab_input, resid)) for layer in layers], pre=True,
                           with_kwargs=True)
        with partial_model(self.model, unembed=self.head) as forward, (grab if grab_resid else nullcontext()):
            logits = forward(input_ids=b.input_ids[:, -1:], attention_mask=b.attention_mask,
                             position_ids=b.position_ids[:, -1:], use_cache=True,
                             **{self.kw: copy.deepcopy(self.past)}).logits[:, -1]
        return self.probs(logits).cpu(), resid

    def columns(self, todo: list[AblationSpec], start: int, resid: list[torch.Tensor]) -> torch.Tensor:
        """``[prompts, C, labels]`` with the configurations along the query axis, from layer ``start``."""
        ids, mask, pos = self.batch.input_ids, self.batch.attention_mask, self.batch.position_ids
        n_conf, dtype = len(todo), next(self.model.hf_model.parameters()).dtype
        hidden = resid[start].expand(-1, n_conf, -1).contiguous() if start else None
        with self.model.apply([ColumnHeadAblation(todo, mask[:, :-1])]), \
                partial_model(self.model, start, hidden, unembed=self.head) as forward:
            logits = forward(input_ids=ids[:, -1:].expand(-1, n_conf),
                             attention_mask=_column_mask(mask, n_conf, dtype),
                             position_ids=pos[:, -1:].expand(-1, n_conf),
                             use_cache=True, **{self.kw: copy.deepcopy(self.past)}).logits  # [prompts, C, labels]
        return self.probs(logits.flatten(0, 1)).view(len(ids), n_conf, -1)

    def rows(self, todo: list[AblationSpec]) -> torch.Tensor:
        """``[prompts, C, labels]`` with rows = prompts x configurations, over every layer."""
        ids, mask, pos = self.batch.input_ids, self.batch.attention_mask, self.batch.position_ids
        n_conf = len(todo)
        cache = copy.deepcopy(self.past)
        cache.batch_repeat_interleave(n_conf)
        with self.model.apply([RowHeadAblation(todo)]), partial_model(self.model, unembed=self.head) as forward:
            logits = forward(input_ids=ids[:, -1:].repeat_interleave(n_conf, 0),
                             attention_mask=mask.repeat_interleave(n_conf, 0),
                             position_ids=pos[:, -1:].repeat_interleave(n_conf, 0),
                             use_cache=True, **{self.kw: cache}).logits[:, -1]
        return self.probs(logits).view(len(ids), n_conf, -1)


def _batched_label_probs(model: HookedModel, prompts: PromptSet, specs: dict[str, AblationSpec], batch_size: int,
                         progress: bool, config_chunk: int) -> dict[str, torch.Tensor]:
    from tqdm.auto import tqdm

    label_idx = torch.as_tensor(prompts.label_ids, device=model.device)
    nl, kw = model.n_layers, cache_kwarg(model)
    first = {name: _first_layer(spec, nl) for name, spec in specs.items()}
    longest = max((len(x) for x in prompts.ids), default=0)
    # the column layout and starting above layer 0 reuse the prefix cache past the usual one new token: exact
    # unless a sliding window could drop prefix keys or positions carry ALiBi biases (then rows, every layer)
    columns = partial_forward_unsupported(model, longest + config_chunk) is None
    ablated = sorted((n for n in specs if first[n] < nl), key=lambda n: first[n])  # late heads group together
    groups = [ablated[i:i + config_chunk] for i in range(0, len(ablated), config_chunk)]
    chunks = batches(len(prompts), batch_size)
    head = label_head(model, label_idx)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in specs}
    bar = tqdm(total=len(chunks) * (len(groups) + 1), desc="ablations", disable=bar_disable(progress), leave=False)
    for rows in chunks:
        run = _FinalToken(model, label_idx, kw, head, *_prefix(model, rows, prompts))
        clean, resid = run.clean(grab_resid=columns)
        for name in specs:
            if first[name] >= nl:
                out[name].append(clean)
        bar.update(1)
        for group in groups:
            todo = [specs[n] for n in group]
            probs = run.columns(todo, first[group[0]], resid) if columns else run.rows(todo)
            for c, name in enumerate(group):
                out[name].append(probs[:, c].cpu())
            bar.update(1)
    bar.close()
    return {k: torch.cat(v) for k, v in out.items()}


def _looped_label_probs(model: HookedModel, prompts: PromptSet, configs: dict[str, Callable[[], list[Intervention]]],
                        batch_size: int, progress: bool) -> dict[str, torch.Tensor]:
    """The reference: one final-token forward per configuration on the full model, the cache rolled back after."""
    from tqdm.auto import tqdm

    label_idx, kw = torch.as_tensor(prompts.label_ids, device=model.device), cache_kwarg(model)
    chunks = batches(len(prompts), batch_size)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in configs}
    bar = tqdm(total=len(chunks) * len(configs), desc="ablations", disable=bar_disable(progress), leave=False)
    for rows in chunks:
        batch, past = _prefix(model, rows, prompts)
        ids, mask, pos = batch.input_ids, batch.attention_mask, batch.position_ids
        for name, make in configs.items():
            with model.apply(make()):
                logits = model.hf_model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=pos[:, -1:],
                                        use_cache=True, **{kw: past}).logits[:, -1]
            past.crop(-1)  # drop the final token again
            out[name].append(logits[:, label_idx].float().softmax(-1).cpu())
            bar.update(1)
    bar.close()
    return {k: torch.cat(v) for k, v in out.items()}
