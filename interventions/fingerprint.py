"""Model fingerprints: tell whether an artifact (lens, steering vector) belongs to a model.

A fingerprint holds the architecture, the sizes, the SHA-256 of the
unembedding (float32 bytes) and a dtype-robust numeric signature of it: the
unembedding times a fixed random probe. Matching uses the sizes plus the
signature (with a tolerance), so a lens trained on the float32 model still
loads on the bfloat16 copy of the same checkpoint, and refuses another model.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import torch

from .errors import ModelMismatchError

if TYPE_CHECKING:
    from .model import HookedModel

_PROBE = 8


def _signature(weight: torch.Tensor) -> list[float]:
    w = weight.detach().float().cpu()
    gen = torch.Generator().manual_seed(1234)
    probe = torch.randn(w.shape[1], _PROBE, generator=gen) / w.shape[1] ** 0.5
    rows = torch.randn(_PROBE, w.shape[0], generator=gen) / w.shape[0] ** 0.5
    return (rows @ (w @ probe)).diagonal().tolist()


def _sizes(model: HookedModel) -> dict[str, Any]:
    return {"architecture": model.arch.name, "model_type": getattr(model.hf_model.config, "model_type", None),
            "n_layers": model.n_layers, "d_model": model.d_model, "n_heads": model.n_heads,
            "d_vocab": model.d_vocab}


def _memo(model: HookedModel, name: str, fn: Any) -> Any:
    """Memoise per model and unembedding version (hashing 100+ MB is not free on every load)."""
    w = model.unembed_weight
    key = (name, w.data_ptr(), w._version, w.dtype, w.device)
    memo = model.__dict__.setdefault("_fingerprint_memo", {})
    if key not in memo:
        memo[key] = fn(w)
    return memo[key]


def model_fingerprint(model: HookedModel) -> dict[str, Any]:
    """Sizes, SHA-256 of the float32 unembedding and its numeric signature."""
    def sha(w: torch.Tensor) -> str:
        return hashlib.sha256(w.detach().float().cpu().contiguous().numpy().data).hexdigest()
    return {**_sizes(model), "unembed_sha256": _memo(model, "sha", sha),
            "unembed_signature": _memo(model, "signature", _signature)}


def model_slug(model: HookedModel) -> str:
    """A short, file-name-safe name for the model: its checkpoint folder or hub name, else its architecture."""
    import re

    path = str(getattr(model.hf_model.config, "_name_or_path", "") or "").rstrip("/\\")
    name = path.replace("\\", "/").split("/")[-1] or model.arch.name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:48]


def model_cache_key(model: HookedModel) -> str:
    """``<slug>-<hash>``: names a cache entry that belongs to this model's weights.

    The hash is the SHA-256 (first 10 hex digits) of the unembedding rounded to bfloat16, with the sizes: the
    same checkpoint loaded in float32 or bfloat16 gets the same key (so it shares, say, its default lens), a
    different model -- even one with the same name and sizes -- gets another.
    """
    def sha_bf16(w: torch.Tensor) -> str:
        h = hashlib.sha256(json.dumps(_sizes(model), sort_keys=True).encode())
        h.update(w.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().data)
        return h.hexdigest()[:10]
    return f"{model_slug(model)}-{_memo(model, 'sha_bf16', sha_bf16)}"


def check_fingerprint(saved: dict[str, Any], model: HookedModel, what: str = "artifact") -> None:
    """Raise :class:`ModelMismatchError` if ``saved`` was not made for ``model``.

    Sizes must match exactly; the unembedding must match its saved signature within a tolerance
    that admits the same checkpoint in another floating-point dtype.
    """
    current = _sizes(model)
    for key in ("architecture", "n_layers", "d_model", "n_heads", "d_vocab"):
        if saved.get(key) != current[key]:
            raise ModelMismatchError(f"This {what} was made for a different model: {key}={saved.get(key)!r}, "
                                     f"but the model has {key}={current[key]!r}.")
    a = torch.tensor(saved.get("unembed_signature", []))
    b = torch.tensor(_memo(model, "signature", _signature))
    if a.shape != b.shape or not torch.allclose(a, b, rtol=2e-2, atol=2e-2 * float(b.abs().max())):
        raise ModelMismatchError(f"This {what} was made for a model with the same sizes but different weights "
                                 "(the unembedding differs); load it on the model it was made for.")
