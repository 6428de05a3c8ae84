"""The lens family: the logit lens, the tuned lens, and the reading machinery they share.

The tuned lens (Belrose et al. 2023): one affine translator per reading, then the model's own decoder.
Reading i maps ``h -> h + h @ weight[i].T + bias[i]``; both are zero at init, so a fresh tuned lens *is*
the logit lens. Translator parameters stay float32 whatever the model dtype; the translated state is cast
to the model dtype just before :meth:`HookedModel.decode_hidden`. Training lives in :mod:`lmscope.lens.training`.

A *reading* is one residual-stream site the lens decodes (``resid_post.L``, and
optionally ``resid_mid.L``, the stream after attention). Readings are ordered by
depth. Every lens decodes through :meth:`HookedModel.decode_hidden` (the model's
own final norm and unembedding), so no copy of the unembedding is ever made.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import nn

from lmscope.interventions.artifacts import expect_tensor, load_artifact, save_artifact
from lmscope.interventions.errors import ArtifactError, InputError
from lmscope.interventions.fingerprint import check_fingerprint
from lmscope.interventions.placement import input_device
from lmscope.interventions.specs import check_layer_range

if TYPE_CHECKING:
    from lmscope.interventions import ActivationCache, HookedModel

    from .trajectory import Trajectory, TrajectoryBatch

#: Residual kinds a lens can read, in within-layer depth order.
READING_KINDS = ("resid_mid", "resid_post")


def normalize_sites(model: HookedModel, sites: str | Sequence[str]) -> tuple[str, ...]:
    """Validate the ``sites`` argument of a lens; return the kinds it reads, in depth order.

    ``"all"`` means every reading kind the architecture has. ``resid_mid`` asked for
    explicitly on an architecture without it (parallel-residual GPT-NeoX) is dropped
    with a warning, because there the attention and MLP read the same stream.
    """
    if isinstance(sites, str):
        kinds = list(READING_KINDS) if sites == "all" else [sites]
        explicit = sites != "all"
    else:
        kinds, explicit = list(sites), True
    if not kinds:
        raise InputError("A lens needs at least one site kind, e.g. sites='resid_post'.")
    for k in kinds:
        if k not in READING_KINDS:
            raise InputError(f"A lens reads {' or '.join(map(repr, READING_KINDS))} (or 'all'), not {k!r}.")
    if "resid_post" not in kinds:
        raise InputError("A lens must read 'resid_post' (its last reading is the model's own output).")
    if "resid_mid" in kinds and "resid_mid" not in model.available_kinds:
        if explicit:
            warnings.warn(f"{model.arch.name} has no resid_mid site (parallel residual): the lens reads "
                          "resid_post only.", stacklevel=3)
        kinds.remove("resid_mid")
    return tuple(k for k in READING_KINDS if k in kinds)


def reading_names(model: HookedModel, kinds: Sequence[str]) -> list[str]:
    """Reading site names ordered by depth (``resid_mid.L`` before ``resid_post.L``)."""
    return [f"{k}.{layer}" for layer in range(model.n_layers) for k in READING_KINDS if k in kinds]


class Unembedding:
    """The model's decoder (final norm + unembedding + the head's logit scale / soft-cap) split for streaming.

    ``blocks`` yields the logits of translated states one vocabulary block at a time, so metrics can be
    accumulated without a ``[tokens, vocab]`` tensor (:func:`lmscope.lens.metrics.logit_stats`). With a
    plain linear unembedding (every supported architecture) the block is ``normed @ W[cols].T + b[cols]``
    in float32; any other unembedding falls back to :meth:`HookedModel.decode_hidden` once, sliced.
    ``fused`` (linear, no scale, no soft-capping) is what the fused-KL training kernel needs.
    """

    def __init__(self, model: HookedModel) -> None:
        self.model = model
        unembed: Any = model.unembed
        config = model.hf_model.config  # the head's scale / soft-cap, as the architecture table describes them
        self.scale: float | None = model.arch.logit_scale(config)
        self.cap: float | None = model.arch.logit_softcap(config)
        self.linear = isinstance(unembed, nn.Linear)
        self.fused = self.linear and self.cap is None and self.scale is None
        if self.linear:
            self.weight = unembed.weight.detach().float()  # no copy for float32 models
            self.bias = unembed.bias.detach().float() if unembed.bias is not None else None

    def normed(self, t: torch.Tensor) -> torch.Tensor:
        """Final norm of translated states (in the model dtype, on the norm's device), back to float32."""
        device = input_device(self.model.hf_model, self.model.final_norm)
        return self.model.final_norm(t.to(device=device, dtype=self.model.dtype)).float()

    def blocks(self, t: torch.Tensor, cols: int) -> Iterator[torch.Tensor]:
        """Float32 logits of translated states ``t [..., d]``, ``cols`` vocabulary columns at a time."""
        vocab = self.model.d_vocab
        if not self.linear:
            z = self.model.decode_hidden(t.to(self.model.dtype)).float()
            for s in range(0, vocab, cols):
                yield z[..., s:s + cols]
            return
        n = self.normed(t).to(self.weight.device)  # the head may sit on another device under a device_map
        for s in range(0, vocab, cols):
            z = n @ self.weight[s:s + cols].T
            if self.bias is not None:
                z += self.bias[s:s + cols]
            if self.scale is not None:
                z = z * self.scale
            yield torch.tanh(z / self.cap) * self.cap if self.cap is not None else z


class Lens:
    """Shared behaviour of :class:`LogitLens` and :class:`~lmscope.lens.lenses.TunedLens`.

    Subclasses implement :meth:`translate`; everything else (decoding, trajectories)
    is common. ``model`` is the :class:`~lmscope.interventions.HookedModel` the lens reads.
    """

    model: HookedModel
    site_kinds: tuple[str, ...]
    readings: list[str]
    name: str = "lens"

    def _init_readings(self, model: HookedModel, sites: str | Sequence[str]) -> None:
        self.model = model
        self.site_kinds = normalize_sites(model, sites)
        self.readings = reading_names(model, self.site_kinds)
        self._index = {name: i for i, name in enumerate(self.readings)}

    @property
    def n_readings(self) -> int:
        return len(self.readings)

    def reading_index(self, reading: int | str) -> int:
        """Index of a reading given by index (negative allowed) or site name (``"resid_post.-1"`` works)."""
        if isinstance(reading, str):
            site = self.model.resolve(reading)
            if len(site) != 1 or site[0].name not in self._index:
                raise InputError(f"{reading!r} is not a reading of this lens; readings: "
                                 f"{self.readings[0]} .. {self.readings[-1]} ({self.n_readings}).")
            return self._index[site[0].name]
        if not -self.n_readings <= reading < self.n_readings:
            raise InputError(f"Reading index {reading} out of range: this lens has {self.n_readings} readings.")
        return reading % self.n_readings

    def select_readings(self, layers: Sequence[int | str] | int | str | None) -> list[int]:
        """Reading indices for ``layers``: None = all; ints are *layer numbers* (negative from the end)
        and select every reading of that layer; strings are reading names."""
        if layers is None:
            return list(range(self.n_readings))
        if isinstance(layers, (int, str)):
            layers = [layers]
        if len(layers) == 0:
            raise InputError("layers is empty: pass None for every layer.")
        out: list[int] = []
        n = self.model.n_layers
        check_layer_range([i for i in layers if isinstance(i, int) and not isinstance(i, bool)], n)
        for item in layers:
            if isinstance(item, str):
                idx = [self.reading_index(item)]
            elif isinstance(item, int) and not isinstance(item, bool):
                layer = item % n
                idx = [self._index[f"{k}.{layer}"] for k in self.site_kinds]
            else:
                raise InputError(f"layers entries must be ints (layer numbers) or reading names, got {item!r}.")
            out += [i for i in idx if i not in out]
        return sorted(out)

    # -- decoding --------------------------------------------------------------------------------
    def translate(self, h: torch.Tensor, i: int) -> torch.Tensor:
        """Map a hidden state at reading ``i`` into the final layer's basis (identity for the logit lens)."""
        raise NotImplementedError

    def logits(self, h: torch.Tensor, i: int | str) -> torch.Tensor:
        """Lens logits of hidden states ``h`` [..., d_model] at reading ``i`` (index or site name)."""
        i = self.reading_index(i)
        return self.model.decode_hidden(self.translate(h, i).to(self.model.dtype))

    def forward_all(self, cache: ActivationCache) -> list[torch.Tensor]:
        """Logits of every reading from a cache holding all reading sites (one tensor per reading).

        This materialises ``n_readings`` full-vocabulary tensors; :meth:`decode` is the
        memory-bounded path for long prompts.
        """
        return [self.logits(cache[name], i) for i, name in enumerate(self.readings)]

    def decode(self, prompts: Any, top_k: int = 5, targets: Sequence[str | int] | str | int | None = None,
               positions: str | int | Sequence[int] = "all",
               layers: Sequence[int | str] | int | str | None = None) -> Trajectory | TrajectoryBatch:
        """Decode prompt(s) into a prediction :class:`~lmscope.lens.trajectory.Trajectory` (one forward in all).

        One prompt (a string or one token-id list) gives a ``Trajectory``; several give a
        ``TrajectoryBatch`` (``batch[i]`` is prompt i). ``positions`` is ``"all"``, ``"last"``,
        token indices (negative from the end), a slice, or one such spec per prompt; ``layers`` picks
        layer numbers or reading names; ``targets`` are
        single-token strings or ids whose rank and probability are tracked.
        """
        from .decode import decode_trajectories

        return decode_trajectories(self, prompts, top_k=top_k, targets=targets, positions=positions, layers=layers)

    def describe(self) -> str:
        """Short label used in trajectories, tables and plot titles."""
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model.arch.name}, readings={self.n_readings}, sites={self.site_kinds})"


class LogitLens(Lens):
    """Decode each reading with the model's final norm + unembedding as it is (nostalgebraist 2020).

    ``sites`` is ``"resid_post"`` (default), ``("resid_mid", "resid_post")`` or ``"all"``.
    """

    name = "logit"

    def __init__(self, model: HookedModel, sites: str | Sequence[str] = "resid_post") -> None:
        self._init_readings(model, sites)

    def translate(self, h: torch.Tensor, i: int) -> torch.Tensor:
        return h


FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
TENSORS_NAME = "lens.safetensors"


class TunedLens(Lens, nn.Module):
    """Affine translators (float32 ``weight [n_readings, d, d]``, ``bias [n_readings, d]``) + the model's decoder.

    ``sites``: ``"resid_post"`` (default), ``("resid_post", "resid_mid")`` or ``"all"``; readings are
    ordered by depth. The last layer's ``resid_post`` also gets a translator (uniform; at zero it is exact).
    ``path`` is the folder the lens was last saved to or loaded from (None otherwise).
    """

    name = "tuned"

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
        """``h + h @ weight[i].T + bias[i]`` in float32 (the caller casts back to the model dtype); ``h`` may
        live on another device (a CPU cache): it is moved to the translators'."""
        hf = h.to(device=self.weight.device, dtype=self.weight.dtype)
        return hf + hf @ self.weight[i].T + self.bias[i]

    def forward(self, h: torch.Tensor, i: int | str) -> torch.Tensor:
        """Same as :meth:`logits`."""
        return self.logits(h, i)

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
        """Write ``config.json`` + ``lens.safetensors`` into the folder ``path`` atomically, replacing whatever the
        folder held (give each run its own folder; ``lmscope train-lens`` refuses another run's lens without
        ``--force``)."""
        out = save_artifact(path, self.config(), {"weight": self.weight.detach(), "bias": self.bias.detach()},
                            config_name=CONFIG_NAME, tensors_name=TENSORS_NAME)
        self.path = Path(path)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: HookedModel) -> TunedLens:
        """Load a saved lens onto ``model`` (read on CPU, then moved to the model's device).

        Raises :class:`~lmscope.interventions.errors.ModelMismatchError` if it was trained for another model.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise InputError(f"No lens folder at {folder}.")
        if not (folder / TENSORS_NAME).is_file():
            raise InputError(f"{folder} is not a tuned lens: {TENSORS_NAME} is missing.")
        config, tensors = load_artifact(folder, config_name=CONFIG_NAME, tensors_name=TENSORS_NAME)
        if config.get("type") != "TunedLens":
            raise InputError(f"{folder} holds a {config.get('type')!r}, not a TunedLens.")
        missing = [k for k in ("sites", "readings") if not isinstance(config.get(k), (list, str))]
        if missing or not isinstance(config.get("format_version", 0), int):
            raise ArtifactError(f"{folder / CONFIG_NAME} is damaged: {', '.join(missing) or 'format_version'} "
                                "missing or of the wrong type.")
        if config.get("format_version", 0) > FORMAT_VERSION:
            raise InputError(f"{folder} was written by a newer lmscope (format {config['format_version']}).")
        check_fingerprint(config.get("fingerprint", {}), model, what="lens")
        lens = cls(model, sites=config["sites"])
        if list(config["readings"]) != lens.readings:
            raise InputError(f"The lens in {folder} has readings {config['readings'][:3]}... which do not match "
                             f"this model's {lens.readings[:3]}...")
        where = folder / TENSORS_NAME
        weight = expect_tensor(tensors, "weight", tuple(lens.weight.shape), where)
        bias = expect_tensor(tensors, "bias", tuple(lens.bias.shape), where)
        if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
            raise ArtifactError(f"{where} holds NaN or infinite translator weights; retrain or re-save the lens.")
        with torch.no_grad():
            lens.weight.copy_(weight.to(torch.float32))
            lens.bias.copy_(bias.to(torch.float32))
        lens.meta = dict(config.get("meta") or {})
        lens.path = folder
        return lens

    def describe(self) -> str:
        """``tuned (<folder>)``, plus the English it was fitted on when known (the default lens records its
        corpus's domains, e.g. ``fitted on literature, technical, legal English``)."""
        domains = self.meta.get("corpus_domains") if isinstance(self.meta, dict) else None
        parts = ([self.path.name] if self.path is not None else []) + (
            [f"fitted on {', '.join(map(str, domains))} English"] if domains else [])
        return f"tuned ({'; '.join(parts)})" if parts else "tuned"

    def __repr__(self) -> str:
        return Lens.__repr__(self)
