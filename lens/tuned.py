"""The tuned lens (Belrose et al. 2023): one affine translator per reading, then the model's own decoder.

Reading i maps ``h -> h + h @ weight[i].T + bias[i]``; both are zero at init, so a
fresh tuned lens *is* the logit lens. Translator parameters stay float32 whatever
the model dtype (bf16/fp16 models included); the translated state is cast to the
model dtype just before :meth:`HookedModel.decode_hidden`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from interventions.errors import InputError

from .logit import Lens

if TYPE_CHECKING:
    from interventions import HookedModel

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
TENSORS_NAME = "lens.safetensors"


class _TrainAccess:
    """``TunedLens.train(model, corpus, ...)`` on the class trains a new lens; ``lens.train(mode)`` on an
    instance is still :meth:`nn.Module.train` (so ``lens.eval()`` and optimiser loops keep working)."""

    def __get__(self, obj: Any, cls: type) -> Callable[..., Any]:
        if obj is None:
            def train(model: HookedModel, corpus: Any, **kw: Any) -> TunedLens:
                """Train a tuned lens on ``corpus``; see :func:`lens.train.train_tuned_lens`."""
                from .train import train_tuned_lens

                return train_tuned_lens(model, corpus, **kw)

            return train
        return nn.Module.train.__get__(obj, cls)


class TunedLens(Lens, nn.Module):
    """Affine translators (float32 ``weight [n_readings, d, d]``, ``bias [n_readings, d]``) + the model's decoder.

    ``sites``: ``"resid_post"`` (default), ``("resid_post", "resid_mid")`` or ``"all"``; readings are
    ordered by depth. The last layer's ``resid_post`` also gets a translator (uniform; at zero it is exact).
    ``path`` is the folder the lens was last saved to or loaded from (None otherwise).
    """

    name = "tuned"
    train = _TrainAccess()  # type: ignore[assignment]

    def __init__(self, model: HookedModel, sites: str | Sequence[str] = "resid_post") -> None:
        nn.Module.__init__(self)
        self._init_readings(model, sites)
        d = model.d_model
        self.weight = nn.Parameter(torch.zeros(self.n_readings, d, d, dtype=torch.float32, device=model.device))
        self.bias = nn.Parameter(torch.zeros(self.n_readings, d, dtype=torch.float32, device=model.device))
        self.path: Path | None = None
        #: Free-form training/evaluation facts saved with the lens (JSON-able).
        self.meta: dict[str, Any] = {}

    def translate(self, h: torch.Tensor, i: int) -> torch.Tensor:
        """``h + h @ weight[i].T + bias[i]`` in float32 (the caller casts back to the model dtype)."""
        hf = h.to(self.weight.dtype)
        return hf + hf @ self.weight[i].T + self.bias[i]

    def forward(self, h: torch.Tensor, i: int | str) -> torch.Tensor:
        """Same as :meth:`logits`."""
        return self.logits(h, i)

    def evaluate(self, corpus: Any, **kw: Any) -> Any:
        """Per-reading KL / cross-entropy / entropy on ``corpus``; see :func:`lens.evaluate.evaluate_lens`."""
        from .evaluate import evaluate_lens

        return evaluate_lens(self, corpus, **kw)

    # -- save / load -----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "type": "TunedLens", "format_version": FORMAT_VERSION, "sites": list(self.site_kinds),
            "readings": list(self.readings), "d_model": self.model.d_model,
            "param_dtype": str(self.weight.dtype).removeprefix("torch."),
            "model_dtype": str(self.model.dtype).removeprefix("torch."),
            "fingerprint": self.model.fingerprint(), "meta": self.meta,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` + ``lens.safetensors`` into the folder ``path`` atomically."""
        from interventions.artifacts import save_artifact

        out = save_artifact(path, self.config(), {"weight": self.weight.detach(), "bias": self.bias.detach()},
                            config_name=CONFIG_NAME, tensors_name=TENSORS_NAME)
        self.path = Path(path)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: HookedModel) -> TunedLens:
        """Load a saved lens onto ``model`` (read on CPU, then moved to the model's device).

        Raises :class:`~interventions.errors.ModelMismatchError` if it was trained for another model.
        """
        from interventions.artifacts import load_artifact
        from interventions.fingerprint import check_fingerprint

        folder = Path(path)
        if not folder.is_dir():
            raise InputError(f"No lens folder at {folder}.")
        if not (folder / TENSORS_NAME).is_file():
            raise InputError(f"{folder} is not a tuned lens: {TENSORS_NAME} is missing.")
        config, tensors = load_artifact(folder, config_name=CONFIG_NAME, tensors_name=TENSORS_NAME)
        if config.get("type") != "TunedLens":
            raise InputError(f"{folder} holds a {config.get('type')!r}, not a TunedLens.")
        if config.get("format_version", 0) > FORMAT_VERSION:
            raise InputError(f"{folder} was written by a newer lmscope (format {config['format_version']}).")
        check_fingerprint(config.get("fingerprint", {}), model, what="lens")
        lens = cls(model, sites=config["sites"])
        if list(config["readings"]) != lens.readings:
            raise InputError(f"The lens in {folder} has readings {config['readings'][:3]}... which do not match "
                             f"this model's {lens.readings[:3]}...")
        weight, bias = tensors.get("weight"), tensors.get("bias")
        if weight is None or bias is None or weight.shape != lens.weight.shape or bias.shape != lens.bias.shape:
            raise InputError(f"{folder}/{TENSORS_NAME} has tensors of the wrong shape for this lens.")
        with torch.no_grad():
            lens.weight.copy_(weight.to(torch.float32))
            lens.bias.copy_(bias.to(torch.float32))
        lens.meta = dict(config.get("meta") or {})
        lens.path = folder
        return lens

    def describe(self) -> str:
        return f"tuned ({self.path.name})" if self.path is not None else "tuned"

    def __repr__(self) -> str:
        return Lens.__repr__(self)
