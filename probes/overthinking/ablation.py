"""Head ablation at the final position: interventions, a final-token runner, and gap reduction.

:class:`HeadQKVAblate` is the authors' variant (overthinking_the_truth): zero a head's query, key and
value slices at the final token. With a zero query every score of that row is 0, so the head attends
uniformly to every position it can see; the zero key only matters to that same query (it is the last
token), and the zero value removes the last position's contribution. The intervention writes exactly
that into ``attn_pattern.L``: the final row of each chosen head becomes ``1/n`` on every visible real
token and ``0`` on the final token itself. It acts per *query* head: on grouped-query models the shared
key/value heads of the group's other heads are left alone (zeroing a shared k/v slice by hand would
touch them too). Zero and mean ablation of the head output use the core's ``Ablate`` on ``head_z.L``.

Only the final token's computation changes, so :func:`final_label_probs` runs each prompt batch's
prefix once, keeps its key/value cache, and re-runs only the final token under each ablation. With
``batch_configs=True`` (the default) the configurations themselves are batched: the prefix cache is
repeated over ``C`` configurations (rows = prompts x configurations) and the final token runs once under
:class:`RowHeadAblation`, in which every row ablates its own configuration's heads. A ``mean`` ablation
averages over its own configuration's rows only, so the numbers equal the one-configuration-at-a-time
loop (``batch_configs=False``, kept as the reference) up to float32 rounding of the larger batch.

The batched runner also avoids work and copies no configuration needs. The final token runs once
unablated (which gives the no-ablation configurations and ``resid_pre`` of every layer); each group of
configurations then starts at its earliest ablated layer from that residual (the configurations are
sorted by it, so a group of late-layer heads skips most of the network). Within a group the
configurations lie along the query axis, not the batch: each prompt's final token appears ``C`` times at
the same position, a 4D mask lets copy ``c`` see the prefix and itself only, and column ``c`` ablates
configuration ``c``, so the prefix cache is shared instead of copied ``C`` times (on CPU those copies cost
more than the arithmetic). The unembedding is cut to the label rows for the duration (only the label
probabilities are read: on a 262k vocabulary that matrix costs more than the rest of a small model's token
forward). Where reusing the prefix cache for more than one new token is not exact (sliding windows the
prompts reach, ALiBi), the groups run as rows over every layer instead.
"""

from __future__ import annotations

import copy
import functools
import random
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from lmscope.interventions.ablate import Ablate
from lmscope.interventions.base import Intervention
from lmscope.interventions.errors import InputError
from lmscope.interventions.kv import output_cache
from lmscope.interventions.local import local_hooks, shell_unsupported
from lmscope.interventions.partial import partial_forward_unsupported, partial_model
from lmscope.interventions.positions import ForwardContext, position_mask
from lmscope.interventions.sites import Site

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel

    from .tasks import PromptSet

Heads = Sequence[tuple[int, int]]
METHODS = ("zero", "mean", "qkv")
#: A batchable configuration: the heads to ablate at the final token and the method (no heads = no ablation).
AblationSpec = tuple[Heads, str]


def _group(heads: Heads) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for item in heads:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, int) for x in item)):
            raise InputError(f"Heads are (layer, head) pairs of ints, got {item!r}.")
        layer, h = item
        if h not in out.setdefault(layer, []):
            out[layer].append(h)
    return out


class HeadQKVAblate(Intervention):
    """Zero the q/k/v slices of ``heads`` (``[(layer, head), ...]``) at each prompt's final token.

    Written as the equivalent attention pattern (see the module docstring); composes with any other
    intervention and saves/loads like them. Only the last prompt token is supported: zeroing k or v at
    an earlier token would also change later queries, which a pattern edit of one row cannot express.
    """

    def __init__(self, heads: Heads) -> None:
        items: list[Any] = [tuple(h) for h in heads]
        if not items:
            raise InputError("HeadQKVAblate needs at least one (layer, head) pair.")
        self._by_layer = _group(items)  # validates: (layer, head) pairs of ints
        self.heads: list[tuple[int, int]] = [(int(h[0]), int(h[1])) for h in items]
        super().__init__([f"attn_pattern.{layer}" for layer in sorted(self._by_layer)], -1)

    def bind(self, model: HookedModel) -> None:
        n, nl = model.n_heads, model.n_layers
        for layer, h in self.heads:
            if not -nl <= layer < nl:
                raise InputError(f"Layer {layer} out of range: the model has {nl} layers.")
            if not 0 <= h < n:
                raise InputError(f"Head index {h} out of range: this model has {n} heads per layer "
                                 f"(valid 0..{n - 1}).")
        self._resolved: dict[int | None, list[int]] = {}
        for layer, hs in self._by_layer.items():  # -1 and n_layers - 1 name the same layer: merge, not overwrite
            self._resolved.setdefault(model.resolve(f"attn_pattern.{layer}")[0].layer, []).extend(hs)
        super().bind(model)

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        q_sel = position_mask(-1, ctx).to(value.device)  # [batch, q]
        head_mask = torch.zeros(value.shape[1], dtype=torch.bool, device=value.device)
        head_mask[self._resolved[site.layer]] = True
        return self.pattern_edit(value, ctx, q_sel[:, None, :, None] & head_mask[None, :, None, None])

    @staticmethod
    def pattern_edit(value: torch.Tensor, ctx: ForwardContext, mask: torch.Tensor) -> torch.Tensor:
        """``value`` (a pattern ``[batch, heads, q, keys]``) with the ``mask``-ed rows made uniform over the
        visible real keys other than the query itself (a zero q/k/v at that query)."""
        keys = value.shape[-1]  # every column seen so far (cache included)
        cols = torch.arange(keys, device=value.device)
        q_cols = torch.arange(ctx.offset, ctx.offset + ctx.seq_len, device=value.device)
        real_k = ctx.attention_mask[:, :keys].to(value.device).bool()  # [batch, keys]
        visible = real_k[:, None, :] & (cols[None, None, :] <= q_cols[None, :, None])  # [batch, q, keys]
        uniform = visible / visible.sum(-1, keepdim=True).clamp(min=1)
        uniform = uniform.masked_fill(cols[None, None, :] == q_cols[None, :, None], 0.0)  # v zeroed at the query
        return torch.where(mask, uniform[:, None].to(value.dtype), value)

    def config(self) -> dict[str, Any]:
        return {"heads": [list(h) for h in self.heads]}

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> HeadQKVAblate:
        return cls([tuple(h) for h in config["heads"]])


def head_ablation(heads: Heads, method: str) -> list[Intervention]:
    """Interventions that ablate ``heads`` at the final token: ``zero``/``mean`` on ``head_z`` (the core's
    ``Ablate``; ``mean`` averages the current forward's real tokens, i.e. the batch's final positions in a
    final-token forward) or the authors' ``qkv`` variant."""
    if method not in METHODS:
        raise InputError(f"Unknown ablation {method!r}; methods: {', '.join(METHODS)}.")
    if method == "qkv":
        return [HeadQKVAblate(heads)]
    _group(heads)  # validates: (layer, head) pairs of ints
    return [Ablate(heads=[(int(layer), int(h)) for layer, h in heads], how=method, positions=-1)]


class RowHeadAblation(Intervention):
    """Per-row head ablation at the final token: row ``b * C + c`` of the batch ablates ``configs[c]``.

    ``configs`` is a list of ``(heads, method)`` (:data:`AblationSpec`); the batch holds ``B`` prompts, each
    repeated over the ``C`` configurations (``repeat_interleave`` order). ``zero`` and ``mean`` act on
    ``head_z.L`` like the core's ``Ablate`` (``mean``: the mean over the real tokens of that configuration's
    own ``B`` rows, the same operation ``Ablate`` does on a one-configuration batch); ``qkv`` writes the
    pattern of :class:`HeadQKVAblate` into the chosen rows' heads.
    """

    def __init__(self, configs: Sequence[AblationSpec]) -> None:
        if not configs:
            raise InputError("RowHeadAblation needs at least one (heads, method) configuration.")
        self.configs: list[tuple[list[tuple[int, int]], str]] = []
        for heads, method in configs:
            if method not in METHODS:
                raise InputError(f"Unknown ablation {method!r}; methods: {', '.join(METHODS)}.")
            items: list[Any] = [tuple(h) for h in heads]
            _group(items)  # validates
            self.configs.append(([(int(h[0]), int(h[1])) for h in items], method))
        kinds = {"zero": "head_z", "mean": "head_z", "qkv": "attn_pattern"}
        names = sorted({f"{kinds[m]}.{layer}" for hs, m in self.configs for layer, _ in hs})
        if not names:
            raise InputError("RowHeadAblation: no configuration names a head; nothing to ablate.")
        super().__init__(names, -1)

    def bind(self, model: HookedModel) -> None:
        n, nl = model.n_heads, model.n_layers
        self._masks: dict[tuple[str, int], torch.Tensor] = {}  # (method, layer) -> [C, heads] bool
        for c, (heads, method) in enumerate(self.configs):
            for layer, h in heads:
                if not -nl <= layer < nl:
                    raise InputError(f"Layer {layer} out of range: the model has {nl} layers.")
                if not 0 <= h < n:
                    raise InputError(f"Head index {h} out of range: this model has {n} heads per layer "
                                     f"(valid 0..{n - 1}).")
                key = (method, layer % nl)
                if key not in self._masks:
                    self._masks[key] = torch.zeros(len(self.configs), n, dtype=torch.bool)
                self._masks[key][c, h] = True
        super().bind(model)

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        n_conf = len(self.configs)
        if ctx.batch_size % n_conf:
            raise InputError(f"RowHeadAblation has {n_conf} configurations; the batch of {ctx.batch_size} rows "
                             "is not prompts x configurations.")
        n_prompts = ctx.batch_size // n_conf
        q_sel = position_mask(-1, ctx).to(value.device)  # [rows, q]
        assert site.layer is not None
        if site.kind == "attn_pattern":
            rows = self._masks[("qkv", site.layer)].to(value.device).repeat(n_prompts, 1)  # [rows, heads]
            return HeadQKVAblate.pattern_edit(value, ctx, q_sel[:, None, :, None] & rows[:, :, None, None])
        out = value
        zero = self._masks.get(("zero", site.layer))
        if zero is not None:
            mask = q_sel[:, :, None, None] & zero.to(value.device).repeat(n_prompts, 1)[:, None, :, None]
            out = torch.where(mask, torch.zeros_like(out), out)
        mean = self._masks.get(("mean", site.layer))
        if mean is not None:
            real = ctx.real.to(value.device).view(n_prompts, n_conf, -1)
            grid = value.view(n_prompts, n_conf, *value.shape[1:])
            repl = torch.zeros_like(grid)
            for c in mean.any(1).nonzero(as_tuple=True)[0].tolist():
                repl[:, c] = grid[:, c][real[:, c]].mean(0)  # Ablate's mean over this configuration's rows
            mask = q_sel[:, :, None, None] & mean.to(value.device).repeat(n_prompts, 1)[:, None, :, None]
            out = torch.where(mask, repl.view_as(value), out)
        return out

    def config(self) -> dict[str, Any]:
        return {"configs": [[[list(h) for h in hs], m] for hs, m in self.configs]}

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> RowHeadAblation:
        return cls([([tuple(h) for h in hs], m) for hs, m in config["configs"]])


class _ColumnHeadAblation(RowHeadAblation):
    """Internal: the configurations along the *query* axis. The forward holds each prompt's final token ``C``
    times (same position id; a 4D mask lets copy ``c`` see the prompt's prefix and itself only), and column
    ``c`` ablates ``configs[c]``: the prefix cache is shared by the ``C`` copies instead of repeated per row.
    ``prefix_mask`` (``[prompts, prefix]``, 1 = real token) gives the keys the ``qkv`` pattern spreads over."""

    def __init__(self, configs: Sequence[AblationSpec], prefix_mask: torch.Tensor) -> None:
        super().__init__(configs)
        self.prefix_mask = prefix_mask

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        n_conf = len(self.configs)
        assert site.layer is not None
        if site.kind == "attn_pattern":  # [prompts, heads, C, prefix + C]
            prefix = self.prefix_mask.to(device=value.device, dtype=value.dtype)
            if value.shape[2] != n_conf or value.shape[3] != prefix.shape[1] + n_conf:
                raise InputError("_ColumnHeadAblation runs only in its own final-token forward.")
            # a zero q/k/v at the final token: weight 1/n on each of its n visible real tokens, 0 on itself
            uniform = torch.cat([prefix / (prefix.sum(1, keepdim=True) + 1), prefix.new_zeros(len(prefix), n_conf)],
                                1)
            cols = self._masks[("qkv", site.layer)].to(value.device).T  # [heads, C]
            return torch.where(cols[None, :, :, None], uniform[:, None, None, :], value)
        if value.shape[1] != n_conf:  # head_z: [prompts, C, heads, d_head]
            raise InputError("_ColumnHeadAblation runs only in its own final-token forward.")
        out = value
        zero = self._masks.get(("zero", site.layer))
        if zero is not None:
            out = torch.where(zero.to(value.device)[None, :, :, None], torch.zeros_like(out), out)
        mean = self._masks.get(("mean", site.layer))
        if mean is not None:  # each configuration's mean over its own rows: the prompts' final tokens
            out = torch.where(mean.to(value.device)[None, :, :, None], value.mean(0, keepdim=True), out)
        return out


def _as_spec(name: str, value: Any) -> AblationSpec | None:
    """A config value as an :data:`AblationSpec`, or ``None`` for a callable (only the loop runs those)."""
    if callable(value):
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[1], str):
        if value[1] not in METHODS:
            raise InputError(f"Config {name!r}: unknown ablation {value[1]!r}; methods: {', '.join(METHODS)}.")
        return (list(value[0]), value[1])
    raise InputError(f"Config {name!r} must be (heads, method) with method one of {', '.join(METHODS)}, or a "
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

    A config is ``(heads, method)`` (:data:`AblationSpec`; ``((), "zero")`` for no ablation) or a callable
    returning interventions. With ``batch_configs`` (and only specs) the final token runs once for up to
    ``config_chunk`` configurations together (:class:`RowHeadAblation`; the prefix cache is repeated per
    configuration, so memory grows with ``config_chunk * batch_size``); otherwise, or with any callable,
    each config re-runs the final token on its own (the reference loop).
    """
    specs = {name: _as_spec(name, v) for name, v in configs.items()}
    if config_chunk < 1:
        raise InputError(f"config_chunk must be at least 1, got {config_chunk}.")
    if batch_configs and all(s is not None for s in specs.values()):
        return _batched_label_probs(model, prompts, specs, batch_size, progress, config_chunk)  # type: ignore[arg-type]
    makers: dict[str, Callable[[], list[Intervention]]] = {
        n: functools.partial(_make, s, configs[n]) for n, s in specs.items()}
    return _looped_label_probs(model, prompts, makers, batch_size, progress)


def _final_token_setup(model: HookedModel, prompts: PromptSet,
                       batch_size: int) -> tuple[torch.Tensor, str, list[range]]:
    """What both final-token runners need: the label ids, the forward's KV-cache keyword, the prompt batches."""
    from .readings import batches

    label_idx = torch.as_tensor(prompts.label_ids, device=model.device)
    from lmscope.interventions.kv import cache_kwarg

    kw = cache_kwarg(model)
    return label_idx, kw, batches(len(prompts), batch_size)


def _prefix(model: HookedModel, rows: Sequence[int], prompts: PromptSet) -> tuple[Any, Any]:
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


def _batched_label_probs(model: HookedModel, prompts: PromptSet, specs: dict[str, AblationSpec], batch_size: int,
                         progress: bool, config_chunk: int) -> dict[str, torch.Tensor]:
    from tqdm.auto import tqdm

    label_idx, kw, chunks = _final_token_setup(model, prompts, batch_size)
    nl = model.n_layers
    first = {name: _first_layer(spec, nl) for name, spec in specs.items()}
    longest = max((len(x) for x in prompts.ids), default=0)
    # the column layout and starting above layer 0 reuse the prefix cache past the usual one new token: exact
    # unless a sliding window could drop prefix keys or positions carry ALiBi biases (then rows, every layer)
    columns = partial_forward_unsupported(model, longest + config_chunk) is None
    ablated = sorted((n for n in specs if first[n] < nl), key=lambda n: first[n])  # late heads group together
    groups = [ablated[i:i + config_chunk] for i in range(0, len(ablated), config_chunk)]
    out: dict[str, list[torch.Tensor]] = {name: [] for name in specs}
    layers = [model.layer_module(i) for i in range(nl)]
    dtype = next(model.hf_model.parameters()).dtype
    bar = tqdm(total=len(chunks) * (len(groups) + 1), desc="ablations", disable=not progress, leave=False)
    head = label_head(model, label_idx)
    restricted = head is not None
    for rows in chunks:
        batch, past = _prefix(model, rows, prompts)
        ids, mask, pos = batch.input_ids, batch.attention_mask, batch.position_ids
        resid: list[torch.Tensor] = []
        grab = local_hooks([(layer, functools.partial(_grab_input, resid)) for layer in layers], pre=True,
                           with_kwargs=True)
        # the final token once, unablated: the no-ablation configs, and the residual entering each layer
        with partial_model(model, unembed=head) as forward, (grab if columns else nullcontext()):
            logits = forward(input_ids=ids[:, -1:], attention_mask=mask, position_ids=pos[:, -1:],
                             use_cache=True, **{kw: copy.deepcopy(past)}).logits[:, -1]
        clean = _label_probs(logits, label_idx, restricted).cpu()
        for name in specs:
            if first[name] >= nl:
                out[name].append(clean)
        bar.update(1)
        for group in groups:
            n_conf, todo = len(group), [specs[n] for n in group]
            cache = copy.deepcopy(past)
            if columns:
                start = first[group[0]]
                hidden = resid[start].expand(-1, n_conf, -1).contiguous() if start else None
                with model.apply([_ColumnHeadAblation(todo, mask[:, :-1])]), \
                        partial_model(model, start, hidden, unembed=head) as forward:
                    logits = forward(input_ids=ids[:, -1:].expand(-1, n_conf),
                                     attention_mask=_column_mask(mask, n_conf, dtype),
                                     position_ids=pos[:, -1:].expand(-1, n_conf),
                                     use_cache=True, **{kw: cache}).logits  # [prompts, C, labels]
                probs = _label_probs(logits.flatten(0, 1), label_idx, restricted).view(len(rows), n_conf, -1)
            else:
                cache.batch_repeat_interleave(n_conf)
                with model.apply([RowHeadAblation(todo)]), partial_model(model, unembed=head) as forward:
                    logits = forward(input_ids=ids[:, -1:].repeat_interleave(n_conf, 0),
                                     attention_mask=mask.repeat_interleave(n_conf, 0),
                                     position_ids=pos[:, -1:].repeat_interleave(n_conf, 0),
                                     use_cache=True, **{kw: cache}).logits[:, -1]
                probs = _label_probs(logits, label_idx, restricted).view(len(rows), n_conf, -1)
            for c, name in enumerate(group):
                out[name].append(probs[:, c].cpu())
            bar.update(1)
    bar.close()
    return {k: torch.cat(v) for k, v in out.items()}


def _looped_label_probs(model: HookedModel, prompts: PromptSet, configs: dict[str, Callable[[], list[Intervention]]],
                        batch_size: int, progress: bool) -> dict[str, torch.Tensor]:
    from tqdm.auto import tqdm

    label_idx, kw, chunks = _final_token_setup(model, prompts, batch_size)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in configs}
    bar = tqdm(total=len(chunks) * len(configs), desc="ablations", disable=not progress, leave=False)
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


def random_head_sets(n_layers: int, n_heads: int, k: int, n_draws: int, seed: int = 0,
                     exclude: Heads = ()) -> list[list[tuple[int, int]]]:
    """``n_draws`` sets of ``k`` distinct random heads (the paper's control), avoiding ``exclude``."""
    pool = [(layer, h) for layer in range(n_layers) for h in range(n_heads) if (layer, h) not in set(exclude)]
    if k > len(pool):
        raise InputError(f"Cannot draw {k} random heads from {len(pool)}.")
    rng = random.Random(seed)
    return [sorted(rng.sample(pool, k)) for _ in range(n_draws)]


def gap_reduction(acc_true: float, acc_false: float, acc_false_ablated: float) -> float:
    """``1 - (acc_true - acc_false_ablated) / (acc_true - acc_false)``; NaN when there is no gap."""
    gap = acc_true - acc_false
    if abs(gap) < 1e-12:
        return float("nan")
    return 1.0 - (acc_true - acc_false_ablated) / gap
