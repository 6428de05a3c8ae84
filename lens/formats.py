"""Lenses people already have: the tuned-lens package's file format (``config.json`` + ``params.pt``).

The tuned-lens package (Belrose et al., v0.2) publishes trained lenses for Pythia, LLaMA, GPT-2 and others as a
folder holding its ``TunedLensConfig`` as JSON and the state dict of ``layer_translators`` saved with
``torch.save``: ``"{i}.weight" [d, d]`` and ``"{i}.bias" [d]`` for ``i`` in ``0 .. num_hidden_layers - 1``.

**Indexing.** Its translator ``i`` reads ``hidden_states[i]`` of the HF forward, the residual stream *entering*
layer ``i`` (``resid_pre.i``): translator 0 reads the embedding output and the last layer's output needs no
translator. lmscope's readings are ``resid_post.L`` (the stream *leaving* layer ``L``), so its translator
``i + 1`` becomes our reading ``resid_post.i`` for ``i < n_layers - 1``; our last reading (the model's own output)
is the identity, as in theirs. Translator 0 (the embeddings) has no lmscope reading and is not imported (a
warning says so when it is not zero). The map is exact: both packages compute ``h + W h + b`` then the model's own
final norm and unembedding.

**Safety.** ``params.pt`` is read with ``torch.load(weights_only=True)``: only tensors and plain containers are
accepted, never arbitrary pickled objects; anything else is refused with an error naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions.artifacts import atomic_dir
from lmscope.interventions.errors import InputError, ModelMismatchError

from .lenses import TunedLens

if TYPE_CHECKING:
    from lmscope.interventions.model import HookedModel

CONFIG = "config.json"
PARAMS = "params.pt"
LENS_TYPE = "linear_tuned_lens"


def is_tuned_lens_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a tuned-lens package folder (``config.json`` + ``params.pt``)."""
    p = Path(path)
    return (p / CONFIG).is_file() and (p / PARAMS).is_file()


def unembedding_hash(model: HookedModel) -> str:
    """The tuned-lens package's fingerprint of a model's unembedding (``sha256`` of numpy's 1-decimal print)."""
    import numpy as np

    weight = model.unembed_weight.detach().cpu().float().numpy()
    with np.printoptions():  # the package relies on numpy's default print options
        text = np.array_str(weight, precision=1)
    return hashlib.sha256(text.encode()).hexdigest()


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{folder / CONFIG} is not a readable tuned-lens config: {err}") from None
    if not isinstance(config, dict):
        raise InputError(f"{folder / CONFIG} must hold a JSON object (a TunedLensConfig).")
    lens_type = config.get("lens_type", LENS_TYPE)
    if lens_type != LENS_TYPE:
        raise InputError(f"{folder / CONFIG} describes a {lens_type!r} lens; only {LENS_TYPE!r} can be imported.")
    for key in ("d_model", "num_hidden_layers"):
        if not isinstance(config.get(key), int):
            raise InputError(f"{folder / CONFIG} lacks the integer field {key!r}.")
    return config


def _read_params(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / PARAMS
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise InputError(f"{path} holds something other than tensors and is refused (it is read with "
                         f"weights_only=True; lmscope never unpickles arbitrary objects): {err}") from None
    except (OSError, RuntimeError, EOFError) as err:
        raise InputError(f"{path} cannot be read as a tuned-lens checkpoint: {err}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} must hold a dict of tensors (the layer_translators state dict).")
    return state


def _check_keys(state: dict[str, torch.Tensor], n: int, d: int, bias: bool, path: Path) -> None:
    want = {f"{i}.weight" for i in range(n)} | ({f"{i}.bias" for i in range(n)} if bias else set())
    missing, extra = sorted(want - set(state)), sorted(set(state) - want)
    if missing or extra:
        raise InputError(f"{path} does not match a lens of {n} layers: missing {missing[:6]}, unexpected "
                         f"{extra[:6]} (the file is for another model or is damaged).")
    for key, value in state.items():
        shape = (d, d) if key.endswith("weight") else (d,)
        if tuple(value.shape) != shape:
            raise InputError(f"{path}: {key} has shape {tuple(value.shape)}, expected {shape}.")


def load_tuned_lens_folder(path: str | os.PathLike[str], model: HookedModel, *,
                           check_model: bool = True) -> TunedLens:
    """A :class:`TunedLens` for ``model`` from a tuned-lens package folder (see the module doc for the mapping).

    Raises :class:`ModelMismatchError` when the file was made for a model of another size, or (``check_model``)
    when its recorded unembedding hash differs from ``model``'s; :class:`InputError` when the folder is not a
    tuned-lens folder, has missing/extra layers or holds anything but tensors.
    """
    folder = Path(path)
    if not is_tuned_lens_folder(folder):
        raise InputError(f"{folder} is not a tuned-lens package folder (it needs {CONFIG} and {PARAMS}).")
    config = _read_config(folder)
    n, d = model.n_layers, model.d_model
    if (config["num_hidden_layers"], config["d_model"]) != (n, d):
        raise ModelMismatchError(
            f"The tuned lens in {folder} is for a model with {config['num_hidden_layers']} layers and d_model "
            f"{config['d_model']} ({config.get('base_model_name_or_path')!r}); this model has {n} and {d}.")
    recorded = config.get("unembed_hash")
    if check_model and recorded and recorded != unembedding_hash(model):
        raise ModelMismatchError(
            f"The tuned lens in {folder} was trained for another model ({config.get('base_model_name_or_path')!r}: "
            "its unembedding hash differs); pass check_model=False to load it anyway.")
    bias = bool(config.get("bias", True))
    state = _read_params(folder)
    _check_keys(state, n, d, bias, folder / PARAMS)
    lens = TunedLens(model, sites="resid_post")
    with torch.no_grad():
        for i in range(1, n):
            lens.weight[i - 1].copy_(state[f"{i}.weight"].float())
            if bias:
                lens.bias[i - 1].copy_(state[f"{i}.bias"].float())
    dropped = state["0.weight"].abs().sum() + (state["0.bias"].abs().sum() if bias else 0)
    if float(dropped) > 0:
        warnings.warn(f"{folder}: translator 0 (for the embedding output, resid_pre.0) has no lmscope reading and "
                      "was not imported; every other layer maps exactly.", stacklevel=2)
    lens.meta = {"imported_from": {"format": "tuned-lens", "path": str(folder),
                                   "base_model_name_or_path": config.get("base_model_name_or_path")}}
    return lens


def save_tuned_lens_folder(lens: TunedLens, path: str | os.PathLike[str]) -> Path:
    """Write ``lens`` (``resid_post`` readings) in the tuned-lens package format, atomically.

    Translator 0 (the embeddings) is written as zeros (the identity); our last reading must be the identity, as
    the format has no translator for the model's output.
    """
    model = lens.model
    n = model.n_layers
    if list(lens.site_kinds) != ["resid_post"]:
        raise InputError("Only lenses that read resid_post alone map onto the tuned-lens format "
                         f"(this one reads {list(lens.site_kinds)}).")
    if float(lens.weight[n - 1].detach().abs().sum() + lens.bias[n - 1].detach().abs().sum()) > 0:
        raise InputError("The tuned-lens format has no translator for the last layer's output; this lens's last "
                         "reading is not the identity, so it cannot be written without changing it.")
    d = model.d_model
    state: dict[str, torch.Tensor] = {"0.weight": torch.zeros(d, d), "0.bias": torch.zeros(d)}
    for i in range(1, n):
        state[f"{i}.weight"] = lens.weight[i - 1].detach().cpu().clone()
        state[f"{i}.bias"] = lens.bias[i - 1].detach().cpu().clone()
    config = {"base_model_name_or_path": getattr(model.hf_model.config, "name_or_path", ""), "d_model": d,
              "num_hidden_layers": n, "bias": True, "base_model_revision": None,
              "unembed_hash": unembedding_hash(model), "lens_type": LENS_TYPE}
    with atomic_dir(path) as tmp:
        torch.save(state, tmp / PARAMS)
        (tmp / CONFIG).write_text(json.dumps(config, indent=1))
    return Path(path)
