"""Exact site identities checked on a short probe forward: the gate an inferred adapter must pass.

:func:`adapter_failures` names every identity that does not hold for a :class:`HookedModel`'s adapter
(the same identities the architecture battery asserts on every registered architecture);
:func:`accept_inferred` refuses an inferred adapter that fails any of them and warns otherwise.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from .architectures import REGISTER_HINT
from .cache import Cache
from .errors import UnsupportedArchitectureError
from .local import local_hooks
from .steer import Steer
from .tolerance import is_close

if TYPE_CHECKING:
    from .model import HookedModel

PROBE_LENGTH = 8


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to a few roundings of the model's dtype, relative to the larger magnitude (:mod:`.tolerance`)."""
    return is_close(a, b, scale=max(1.0, float(b.abs().max())))


def _probe_tokens(model: HookedModel) -> torch.Tensor:
    ids = (torch.arange(PROBE_LENGTH) * 7919 + 3) % max(2, model.d_vocab - 1) + 1
    return ids.clamp(max=model.d_vocab - 1).unsqueeze(0).to(model.device)


def _o_proj_outputs(model: HookedModel, tokens: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """A plain cached run plus the attention output projection's own output per layer (taken by hand)."""
    outs: list[torch.Tensor] = []
    o_projs = [model.module(f"{model.arch.layers}.{i}.{model.arch.attn}.{model.arch.o_proj}")
               for i in range(model.n_layers)]
    kinds = ["embed", "resid_pre.*", "ln1.*", "ln2.*", "head_z.*", "attn_out.*", "mlp_out.*", "resid_post.*"]
    kinds += ["resid_mid.*"] if "resid_mid" in model.available_kinds else []
    with local_hooks([(m, lambda m, a, o: outs.append(o[0] if isinstance(o, tuple) else o)) for m in o_projs]):
        result = model.run(tokens, [Cache(kinds)])
    cache = {name: result.cache[name] for name in model.sites() if name in result.cache}
    cache["logits"] = result.logits
    return cache, [o.detach() for o in outs]


def adapter_failures(model: HookedModel) -> list[str]:
    """The identities that fail on a probe forward (empty when the adapter describes the model exactly)."""
    tokens = _probe_tokens(model)
    with torch.no_grad():
        hf = model.hf_model(tokens).logits
    c, o_proj = _o_proj_outputs(model, tokens)
    failures: list[str] = []

    def check(ok: bool, identity: str) -> None:
        if not ok and identity not in failures:
            failures.append(identity)

    check(_close(c["logits"], hf), "a run with every site hooked equals the plain HF forward")
    if model.arch.position_embed is None:
        check(_close(c["embed"], c["resid_pre.0"]), "embed = resid_pre.0")
    for i in range(model.n_layers):
        if i + 1 < model.n_layers:
            check(torch.equal(c[f"resid_post.{i}"], c[f"resid_pre.{i + 1}"]), "resid_post.L = resid_pre.L+1")
        check(_close(c[f"resid_pre.{i}"] + c[f"attn_out.{i}"] + c[f"mlp_out.{i}"], c[f"resid_post.{i}"]),
              "resid_post = resid_pre + attn_out + mlp_out")
        w_o, b_o = model.output_projection(i)
        projected = torch.einsum("bphd,hdm->bpm", c[f"head_z.{i}"], w_o) + (b_o if b_o is not None else 0)
        check(_close(projected, o_proj[i]), "head_z through output_projection = the output projection's output")
    check(_close(model.decode_hidden(c[f"resid_post.{model.n_layers - 1}"]), hf),
          "final_norm then unembedding of the last resid_post = the logits")
    for ok, identity in _norm_checks(model, c):
        check(ok, identity)
    failures += _write_failures(model, tokens, c)
    return failures


def _norm_checks(model: HookedModel, c: dict[str, torch.Tensor]) -> list[tuple[bool, str]]:
    """``ln1 = attn_norm(resid_pre)`` and ``ln2 = mlp_norm(resid_mid, or resid_pre on parallel blocks)``: the
    adapter's input norms are the modules the blocks really read through (edge-level circuits rely on them)."""
    out = []
    for i in range(model.n_layers):
        layer = model.layer_module(i)
        stream = c.get(f"resid_mid.{i}", c[f"resid_pre.{i}"])
        for which, site, x in (("attn", "ln1", c[f"resid_pre.{i}"]), ("mlp", "ln2", stream)):
            norm = model.arch.input_norm(layer, which)
            with torch.no_grad():
                want = x if norm is None else norm(x)
            out.append((_close(want, c[f"{site}.{i}"]), f"{site} = the adapter's {which}_norm of the stream it reads"))
    return out


def _write_failures(model: HookedModel, tokens: torch.Tensor, base: dict[str, torch.Tensor]) -> list[str]:
    """A write at ``resid_mid`` must reach the MLP; on parallel blocks the MLP must not see ``attn_out``."""
    layer = model.n_layers // 2
    scale = float(base[f"resid_pre.{layer}"].norm(dim=-1).mean()) or 1.0
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)).to(model.device, model.dtype)
    v = v * (scale / float(v.norm()))
    if "resid_mid" in model.available_kinds:
        names = [f"resid_mid.{layer}", f"mlp_out.{layer}", f"resid_post.{layer}"]
        c = model.run(tokens, [Steer(f"resid_mid.{layer}", v), Cache(names)]).cache
        lands = _close(c[f"resid_mid.{layer}"] + c[f"mlp_out.{layer}"], c[f"resid_post.{layer}"])
        reaches = not _close(c[f"mlp_out.{layer}"], base[f"mlp_out.{layer}"])
        return [] if lands and reaches else [
            "a write at resid_mid lands where the residual is formed and is what the MLP reads"]
    c = model.run(tokens, [Steer(f"attn_out.{layer}", v), Cache(f"mlp_out.{layer}")]).cache
    return [] if _close(c[f"mlp_out.{layer}"], base[f"mlp_out.{layer}"]) else [
        "parallel block: the MLP reads resid_pre, not resid_pre + attn_out"]


def accept_inferred(model: HookedModel) -> None:
    """Verify an inferred adapter on a probe forward: refuse it naming the failing identities, else warn."""
    model_type = model.arch.model_types[0]
    failures = adapter_failures(model)
    if failures:
        from .inference import closest_families

        raise UnsupportedArchitectureError(
            f"No lmscope adapter for model_type={model_type!r}; its module tree looks like {model.arch.name}, but "
            f"that inferred adapter fails its probe checks: {'; '.join(failures)}. Closest supported families: "
            f"{', '.join(closest_families(model.hf_model))}. {REGISTER_HINT}")
    warnings.warn(
        f"No lmscope adapter is registered for model_type={model_type!r}; using an adapter inferred from its module "
        f"tree ({model.arch.name}), verified on a probe forward (residual identities, head_z projection, resid_mid "
        "writes, final norm + unembedding). Register one to make this explicit.", stacklevel=3)
