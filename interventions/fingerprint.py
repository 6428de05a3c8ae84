"""Model fingerprints: tell whether an artifact (lens, steering vector) belongs to a model.

A fingerprint holds the architecture, the sizes, the SHA-256 of the
unembedding (float32 bytes) and a dtype-robust numeric signature of it: the
unembedding times a fixed random probe. Matching uses the sizes plus the
signature (with a tolerance), so a lens trained on the float32 model still
loads on the bfloat16 copy of the same checkpoint, and refuses another model.
"""

from __future__ import annotations

import hashlib
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


def model_fingerprint(model: HookedModel) -> dict[str, Any]:
    w = model.unembed_weight
    return {
        "architecture": model.arch.name,
        "model_type": getattr(model.hf_model.config, "model_type", None),
        "n_layers": model.n_layers, "d_model": model.d_model, "n_heads": model.n_heads, "d_vocab": model.d_vocab,
        "unembed_sha256": hashlib.sha256(w.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest(),
        "unembed_signature": _signature(w),
    }


def check_fingerprint(saved: dict[str, Any], model: HookedModel, what: str = "artifact") -> None:
    """Raise :class:`ModelMismatchError` if ``saved`` was not made for ``model``."""
    current = model_fingerprint(model)
    for key in ("architecture", "n_layers", "d_model", "n_heads", "d_vocab"):
        if saved.get(key) != current[key]:
            raise ModelMismatchError(f"This {what} was made for a different model: {key}={saved.get(key)!r}, "
                                     f"but the model has {key}={current[key]!r}.")
    if saved.get("unembed_sha256") == current["unembed_sha256"]:
        return
    a = torch.tensor(saved.get("unembed_signature", []))
    b = torch.tensor(current["unembed_signature"])
    if a.shape != b.shape or not torch.allclose(a, b, rtol=2e-2, atol=2e-2 * float(b.abs().max())):
        raise ModelMismatchError(f"This {what} was made for a model with the same sizes but different weights "
                                 "(the unembedding differs); load it on the model it was made for.")
