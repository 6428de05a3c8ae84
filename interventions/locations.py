"""Where each site kind lives: one declarative entry per kind, read by every backend.

Most kinds are one side (output or first input) of one module that the architecture table names, plus a
mapping between the raw tensor found there and the site's value (a head split, a slice of a fused
projection) and back. :data:`MODULE_SITES` holds those; a backend hooks the module (PyTorch hooks) or
reads the envoy (nnsight) and applies ``read``/``write``. The remaining kinds need more than one module
side or the attention function itself; :data:`COMPUTED_SITES` says what each needs, and each backend
keeps one handler per computed kind in a table keyed the same way (kinds a backend cannot give raise a
:class:`~lmscope.interventions.errors.SiteError`).

Adding a kind: add it to :mod:`lmscope.interventions.sites` (name, docs), then an entry here (or a
computed handler in each backend) and, where it depends on the architecture, a field in
:class:`~lmscope.interventions.architectures.Architecture`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from .projections import HeadShape, read_gate, read_qkv, write_gate, write_qkv
from .sites import Site

if TYPE_CHECKING:
    from .architectures import Architecture
    from .model import HookedModel

Reader = Callable[["HookedModel", Site, torch.Tensor], torch.Tensor]
Writer = Callable[["HookedModel", Site, torch.Tensor, torch.Tensor], torch.Tensor]


def _as_is(model: HookedModel, site: Site, raw: torch.Tensor) -> torch.Tensor:
    return raw


def _replace(model: HookedModel, site: Site, raw: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    return new


def _never(arch: Architecture) -> bool:
    return False


@dataclass(frozen=True)
class Location:
    """A site kind read at ``side`` (``"output"`` or ``"input"``: the first argument) of the module at ``path``.

    ``read(model, site, raw)`` turns the tensor found there into the site's value; ``write(model, site,
    raw, new)`` turns a new site value back into the tensor to hand on (exactly: elements outside the
    site keep their values). ``copy(arch)``: hand HF a copy of the output (modules whose output HF then
    updates in place, so cached values stay what the site held).
    """

    path: Callable[[HookedModel, int | None], str]
    side: str
    read: Reader = _as_is
    write: Writer = _replace
    copy: Callable[[Architecture], bool] = _never


def _layer(model: HookedModel, layer: int | None) -> str:
    return f"{model.arch.layers}.{layer}"


def _o_proj(model: HookedModel, layer: int | None) -> str:
    return f"{model.arch.layers}.{layer}.{model.arch.attn}.{model.arch.o_proj}"


def _split_heads(model: HookedModel, site: Site, raw: torch.Tensor) -> torch.Tensor:
    return raw.reshape(*raw.shape[:-1], model.n_heads, model.d_head)


def _merge_heads(model: HookedModel, site: Site, raw: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    return new.reshape(raw.shape)


def head_shape(model: HookedModel) -> HeadShape:
    return HeadShape(model.n_heads, model.n_kv_heads, model.d_head)


def _qkv_layout(model: HookedModel, site: Site) -> str:
    assert site.layer is not None
    return model.arch.qkv_path(model.hf_model.config, site.layer, site.kind)[1]


def _read_qkv(model: HookedModel, site: Site, raw: torch.Tensor) -> torch.Tensor:
    return read_qkv(raw, site.kind, _qkv_layout(model, site), head_shape(model))


def _write_qkv(model: HookedModel, site: Site, raw: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    return write_qkv(raw, new, site.kind, _qkv_layout(model, site), head_shape(model))


def _qkv_for(kind: str) -> Location:
    def path(model: HookedModel, layer: int | None) -> str:
        assert layer is not None
        return model.arch.qkv_path(model.hf_model.config, layer, kind)[0]
    return Location(path, "output", _read_qkv, _write_qkv)


def _mlp_in(model: HookedModel, layer: int | None) -> str:
    assert layer is not None
    return model.arch.mlp_paths(layer)[0]


def _mlp_down(model: HookedModel, layer: int | None) -> str:
    assert layer is not None
    return model.arch.mlp_paths(layer)[1]


def _read_gate(model: HookedModel, site: Site, raw: torch.Tensor) -> torch.Tensor:
    return read_gate(raw, model.arch.mlp_in_fused)


def _write_gate(model: HookedModel, site: Site, raw: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    return write_gate(raw, new, model.arch.mlp_in_fused)


def _attn(model: HookedModel, layer: int | None) -> str:
    return f"{model.arch.layers}.{layer}.{model.arch.attn}"


def _mlp(model: HookedModel, layer: int | None) -> str:
    return f"{model.arch.layers}.{layer}.{model.arch.mlp}"


def _attn_out(model: HookedModel, layer: int | None) -> str:
    assert layer is not None
    return model.arch.attn_out_path(layer)


def _mlp_out(model: HookedModel, layer: int | None) -> str:
    assert layer is not None
    return model.arch.mlp_out_path(layer)


MODULE_SITES: dict[str, Location] = {
    "embed": Location(lambda m, layer: m.arch.embed, "output"),
    "resid_pre": Location(_layer, "input"),
    "ln1": Location(_attn, "input"),
    "ln2": Location(_mlp, "input"),
    "q": _qkv_for("q"),
    "k": _qkv_for("k"),
    "v": _qkv_for("v"),
    "head_z": Location(_o_proj, "input", _split_heads, _merge_heads),
    "attn_out": Location(_attn_out, "output"),
    "mlp_pre": Location(_mlp_in, "output", _read_gate, _write_gate),
    "mlp_post": Location(_mlp_down, "input"),
    "mlp_out": Location(_mlp_out, "output", copy=lambda arch: arch.mlp_output_mutated),
    "resid_post": Location(_layer, "output"),
    "final_norm": Location(lambda m, layer: m.arch.final_norm, "output"),
}

#: Kinds a backend computes itself, and what each needs.
COMPUTED_SITES: dict[str, str] = {
    "rot_q": "the query arriving at the attention function (after q-norm and rotary)",
    "rot_k": "the key arriving at the attention function (after k-norm and rotary, before GQA repetition)",
    "attn_scores": "the scores inside an eager attention, before the softmax",
    "attn_pattern": "the probabilities inside an eager attention",
    "head_out": "the output projection's input and output (a write adds its change to the output)",
    "resid_mid": "the layer input plus the attention contribution (a write becomes the contribution)",
    "logits": "the causal-LM module's output",
}

#: Kinds read inside the attention function (the hooks backend swaps in an attention of its own).
ATTENTION_FUNCTION_SITES: tuple[str, ...] = ("rot_q", "rot_k", "attn_scores", "attn_pattern")
#: Of those, the kinds that need the eager (probabilities-forming) attention.
EAGER_SITES: tuple[str, ...] = ("attn_scores", "attn_pattern")


def head_out_value(model: HookedModel, layer: int, z: torch.Tensor) -> torch.Tensor:
    """Per-head contributions ``[b, pos, heads, d_model]`` of the output projection's input ``z`` (no bias)."""
    w_o, _ = model.output_projection(layer)
    heads = z.reshape(*z.shape[:-1], model.n_heads, model.d_head)
    return torch.einsum("bphd,hdm->bphm", heads, w_o.to(heads.dtype))
