"""What a running server holds: the model, its lenses and steering interventions; and how it decodes.

Requests run concurrently in worker threads. Each decode (and each workbench view) opens its own session
(``model.apply``), which acts only on that thread's forwards, so concurrent answers equal one-by-one answers.
A semaphore bounds how many light requests compute at once (memory stays bounded under load); heavy ones run
as jobs on threads of their own (:class:`~lmscope.lens.serve.jobs.JobManager`).
"""

from __future__ import annotations

import copy
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, cast

from lmscope.interventions import HookedModel, Intervention, Steer
from lmscope.interventions.base import load_interventions
from lmscope.interventions.errors import InputError, LmscopeError
from lmscope.interventions.specs import parse_layers

from ..lenses import Lens, LogitLens
from .active import Active, build_active
from .jobs import JobManager
from .schema import LIMITS, DecodeRequest, InterventionsSpec, Limits
from .steering import NormTable, is_vector_folder


class NotFound(LmscopeError):
    """A lens or steering name the server does not have (HTTP 404)."""


class Mismatch(LmscopeError):
    """The request is for another model or lens than this server serves (HTTP 409: decode locally)."""


def read_interventions(folder: Path) -> list[Intervention]:
    """A folder written by ``save_interventions`` (a list) or ``Intervention.save`` (one)."""
    if (folder / "interventions.json").is_file():
        return load_interventions(folder)
    if (folder / "intervention.json").is_file():
        return [Intervention.load(folder)]
    raise InputError(f"{folder} holds no saved interventions (interventions.json or intervention.json).")


def scaled(interventions: list[Intervention], scale: float) -> list[Intervention]:
    """Fresh copies for one request; ``Steer`` scales are multiplied by ``scale`` (others apply as saved)."""
    out: list[Intervention] = []
    for iv in interventions:
        if isinstance(iv, Steer):
            out.append(Steer(iv.site_spec, iv.vector, iv.scale * scale, iv.positions))
        else:
            out.append(copy.deepcopy(iv))
    return out


class ServerState:
    """The resident model, its lenses by name, and named steering interventions.

    ``model_spec`` is the ``--model`` string the server was started with (``lmscope decode`` only uses a
    server whose model spec, dtype and device equal its own). ``root`` is the only folder from which
    requests may name intervention folders; the server never writes files.
    """

    def __init__(self, model: HookedModel, lenses: dict[str, Lens], *, model_spec: str = "default",
                 dtype: str = "float32", device: str = "cpu", steering: dict[str, list[Intervention]] | None = None,
                 root: str | os.PathLike[str] | None = None, lens_specs: dict[str, str] | None = None,
                 limits: Limits = LIMITS, vector_folders: dict[str, Path] | None = None) -> None:
        self.model = model
        self.lenses = dict(lenses)
        self.lenses.setdefault("logit", LogitLens(model))
        self.model_spec, self.dtype, self.device = model_spec, dtype, device
        self.steering = dict(steering or {})
        for ivs in self.steering.values():
            for iv in ivs:  # refuse a vector of the wrong shape at start-up, not per request
                iv.bind(model)
        self.root = Path(root).resolve() if root is not None else None
        #: --lens spec as lmscope decode spells it ('logit', 'tuned', an absolute folder) -> lens name
        self.lens_specs = dict(lens_specs or {"logit": "logit"})
        self.limits = limits
        self._gate = threading.BoundedSemaphore(limits.max_concurrent)
        self._mid_lens: Lens | None = None
        self._folder_cache: dict[Path, list[Intervention]] = {}
        #: --steer NAME=FOLDER where FOLDER holds a SteeringVector (steering.json)
        self.vector_folders = {name: Path(f).resolve() for name, f in (vector_folders or {}).items()}
        self._vectors: dict[Path, Any] = {}
        self.norms = NormTable(model)
        self.jobs = JobManager(model, limits)
        #: answers computed once per server (repeated-token head scores by interventions)
        self.memo: dict[Any, Any] = {}
        self.memo_lock = threading.Lock()

    # -- look-ups ------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        m = self.model
        return {"model": {"spec": self.model_spec, "arch": m.arch.name, "n_layers": m.n_layers, "d_model": m.d_model,
                          "d_vocab": m.d_vocab, "dtype": self.dtype, "device": self.device,
                          "has_tokenizer": m.tokenizer is not None, "n_heads": m.n_heads,
                          "kinds": sorted(m.available_kinds)},
                "lenses": {name: lens.describe() for name, lens in self.lenses.items()},
                "lens_readings": {name: lens.readings for name, lens in self.lenses.items()},
                "steering": sorted({*self.steering, *self.vector_folders}),
                "root": str(self.root) if self.root else None,
                "limits": self.limits.to_dict()}

    def lens(self, name: str, mid: bool = False) -> Lens:
        if name not in self.lenses:
            raise NotFound(f"No lens {name!r} on this server; loaded: {', '.join(self.lenses)}.")
        if mid and name == "logit":
            if self._mid_lens is None:
                self._mid_lens = LogitLens(self.model, sites="all")
            return self._mid_lens
        return self.lenses[name]

    def steering_folder(self, name: str) -> Path | None:
        """The folder a steering name means: a ``--steer`` SteeringVector folder, or one inside ``root`` (never
        outside it); None for a name given to ``--steer`` with saved interventions."""
        if name in self.vector_folders:
            return self.vector_folders[name]
        if name in self.steering:
            return None
        if self.root is None:
            raise NotFound(f"No steering {name!r}; loaded: {', '.join(sorted(self.steering)) or 'none'} "
                           "(start the server with --root DIR to allow saved folders by path).")
        folder = (self.root / name).resolve()
        if not folder.is_relative_to(self.root) or folder == self.root:
            raise InputError(f"Steering folder {name!r} is outside the server's root folder.")
        if not folder.is_dir():
            raise NotFound(f"No steering {name!r}: not a name given to --steer, nor a folder in the root folder.")
        return folder

    def steering_vector(self, folder: Path) -> Any:
        """The ``SteeringVector`` saved in ``folder`` (loaded once, checked against the model)."""
        from lmscope.probes.steering.vectors import SteeringVector

        if folder not in self._vectors:
            self._vectors[folder] = SteeringVector.load(folder, self.model)
        return self._vectors[folder]

    def steering_for(self, name: str) -> list[Intervention]:
        """Named steering, or a saved folder of interventions inside ``root`` (never outside it)."""
        if name in self.steering:
            return self.steering[name]
        folder = self.steering_folder(name)
        assert folder is not None
        if is_vector_folder(folder):
            raise InputError(f"Steering {name!r} is a SteeringVector folder; give it as a workbench steering "
                             "(interventions.steer) with a layer and a scale.")
        if folder not in self._folder_cache:
            ivs = read_interventions(folder)
            for iv in ivs:
                iv.bind(self.model)
            self._folder_cache[folder] = ivs
        return self._folder_cache[folder]

    # -- work ----------------------------------------------------------------------------------
    def decode(self, req: DecodeRequest) -> tuple[list[Any], list[str]]:
        """The trajectories of ``req`` (one per prompt), computed under its own session, and the labels of the
        workbench interventions they ran under (the mean of a mean ablation is over the first prompt)."""
        lens = self.lens(req.lens, req.mid)
        layers = parse_layers(req.layers) if isinstance(req.layers, str) else req.layers
        positions: Any = req.positions
        interventions = scaled(self.steering_for(req.steer.name), req.steer.scale) if req.steer else []
        prompts: list[Any] = list(req.prompts)
        for p in prompts:
            if isinstance(p, str) and self.model.tokenizer is None:
                raise InputError("This server's model has no tokenizer: send token-id lists.")
        with self.view(req.interventions, prompts[0]) as active:
            batch = self.model.tokenize(prompts)
            if batch.input_ids.shape[1] > self.limits.max_prompt_tokens:
                raise InputError(f"A prompt has {batch.input_ids.shape[1]} tokens; the limit is "
                                 f"{self.limits.max_prompt_tokens}.")
            with self.model.apply(interventions):
                out = lens.decode(prompts, top_k=req.top_k, targets=req.targets or None, positions=positions,
                                  layers=layers)
        return list(cast(Any, out)), active.labels

    @contextmanager
    def view(self, spec: InterventionsSpec | None, prompt: Any) -> Iterator[Active]:
        """A light request's turn (one of ``max_concurrent``) under the interventions of ``spec`` (built for
        ``prompt``, before the session opens: a typical norm is measured on the plain model)."""
        with self._gate:
            active = build_active(self, spec, prompt)
            with self.model.apply(active.interventions):
                yield active

    def cli_lens_name(self, spec: str) -> str:
        """The lens serving ``lmscope decode --lens spec``; Mismatch when this server has none."""
        key = spec if spec in ("logit", "tuned") else str(Path(spec).resolve())
        if key not in self.lens_specs:
            raise Mismatch(f"This server has no lens for --lens {spec!r}.")
        return self.lens_specs[key]
