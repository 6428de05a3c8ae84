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
prefix once, keeps its key/value cache, and re-runs only the final token under each ablation.
"""

from __future__ import annotations

import inspect
import random
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from lmscope.interventions.ablate import Ablate
from lmscope.interventions.base import Intervention
from lmscope.interventions.errors import InputError
from lmscope.interventions.positions import ForwardContext, position_mask
from lmscope.interventions.sites import Site

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel

    from .tasks import PromptSet

Heads = Sequence[tuple[int, int]]
METHODS = ("zero", "mean", "qkv")


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
        self._resolved = {model.resolve(f"attn_pattern.{layer}")[0].layer: hs for layer, hs in self._by_layer.items()}
        super().bind(model)

    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> torch.Tensor:
        # value: [batch, heads, q, keys]; keys cover every column seen so far (cache included)
        q_sel = position_mask(-1, ctx).to(value.device)  # [batch, q]
        keys = value.shape[-1]
        cols = torch.arange(keys, device=value.device)
        q_cols = torch.arange(ctx.offset, ctx.offset + ctx.seq_len, device=value.device)
        real_k = ctx.attention_mask[:, :keys].to(value.device).bool()  # [batch, keys]
        visible = real_k[:, None, :] & (cols[None, None, :] <= q_cols[None, :, None])  # [batch, q, keys]
        uniform = visible / visible.sum(-1, keepdim=True).clamp(min=1)
        uniform = uniform.masked_fill(cols[None, None, :] == q_cols[None, :, None], 0.0)  # v zeroed at the query
        head_mask = torch.zeros(value.shape[1], dtype=torch.bool, device=value.device)
        head_mask[self._resolved[site.layer]] = True
        mask = q_sel[:, None, :, None] & head_mask[None, :, None, None]
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


@torch.no_grad()
def final_label_probs(model: HookedModel, prompts: PromptSet,
                      configs: dict[str, Callable[[], list[Intervention]]], *, batch_size: int = 8,
                      progress: bool = True) -> dict[str, torch.Tensor]:
    """Label probabilities (renormalised) at each prompt's final token under each config: name ->
    ``[n_prompts, n_labels]``. The prefix runs once per batch; each config re-runs the final token only."""
    from tqdm.auto import tqdm

    from .readings import batches

    label_idx = torch.as_tensor(prompts.label_ids, device=model.device)
    kw = "cache" if "cache" in inspect.signature(model.hf_model.forward).parameters else "past_key_values"
    out: dict[str, list[torch.Tensor]] = {name: [] for name in configs}
    chunks = batches(len(prompts), batch_size)
    bar = tqdm(total=len(chunks) * len(configs), desc="ablations", disable=not progress, leave=False)
    for rows in chunks:
        batch = model.tokenize([prompts.ids[i] for i in rows])
        ids, mask, pos = batch.input_ids, batch.attention_mask, batch.position_ids
        pre = model.hf_model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
                             use_cache=True, logits_to_keep=1)
        past = pre.get("cache", None) or pre.get("past_key_values")
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
