"""``LensReadout``: record lens predictions inside any run or generation, next to Steer/Patch/Ablate.

It is an :class:`~lmscope.interventions.Intervention` that only reads (``writes=False``): it attaches to every
reading site of its lens and, on each forward, stores the lens top-k (or full log-probs) at the selected
positions. Because it sees each site *as the forward computed it*, it shows the effect of interventions
placed before it in the list (or at earlier layers) on what later layers predict.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmscope.interventions.base import Intervention, decode_positions
from lmscope.interventions.errors import InputError
from lmscope.interventions.positions import ForwardContext, PositionSpec, gather_positions
from lmscope.interventions.sites import Site

from .lenses import Lens, LogitLens, TunedLens

if TYPE_CHECKING:
    from lmscope.interventions import HookedModel


class LensReadout(Intervention):
    """Record ``lens`` predictions at every reading site during a session.

    ``positions`` follows the intervention convention (None = every real token, an int, a list...;
    with explicit positions each row must select the same number of tokens). ``top_k`` ids/probs are
    kept per reading; ``log_probs=True`` keeps full ``[.., vocab]`` log-probabilities instead (memory!).
    After the session, ``readout[name]`` (e.g. ``"resid_post.3"``) gives ``{"top_ids", "top_probs"}``
    (or ``{"log_probs"}``) shaped ``[batch, pos, k]``; generation steps concatenate along ``pos``.
    With ``positions=None`` cells are padded as computed (left padding) and ``readout.mask`` marks real ones.

    Serialisation stores the lens *by reference*: ``"logit"`` or the folder of a saved tuned lens; the lens
    is (re)built when the loaded readout is bound to a model. An unsaved tuned lens cannot be serialised.
    """

    writes = False
    session_fields = ("_records", "_masks", "_first_site")

    def __init__(self, lens: Lens | str | Path, positions: PositionSpec = None, top_k: int = 5,
                 log_probs: bool = False, sites: Any = "resid_post") -> None:
        if isinstance(lens, Lens):
            self.lens: Lens | None = lens
            path = getattr(lens, "path", None)
            self.lens_ref: str | None = "logit" if isinstance(lens, LogitLens) else \
                (str(path) if path is not None else None)
            self.site_kinds: tuple[str, ...] = lens.site_kinds
            spec: list[str] = list(lens.readings)
        elif isinstance(lens, (str, Path)):  # by reference (from_config): resolved at bind
            self.lens, self.lens_ref = None, str(lens)
            self.site_kinds = tuple([sites] if isinstance(sites, str) else sites)
            spec = [f"{k}.*" for k in self.site_kinds]
        else:
            raise InputError(f"LensReadout needs a LogitLens/TunedLens (or 'logit' / a lens folder), got {lens!r}.")
        super().__init__(spec, positions)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise InputError(f"top_k must be a positive int, got {top_k!r}.")
        self.top_k, self.log_probs = top_k, bool(log_probs)
        self._records: dict[str, dict[str, list[torch.Tensor]]] = {}
        self._masks: list[torch.Tensor] = []
        self._first_site: str | None = None

    def bind(self, model: HookedModel) -> None:
        if self.lens is None:
            if self.lens_ref == "logit":
                self.lens = LogitLens(model, sites=self.site_kinds)
            else:
                self.lens = TunedLens.load(str(self.lens_ref), model)
            self.site_spec = list(self.lens.readings)
        if self.lens.model is not model:
            raise InputError("This LensReadout's lens belongs to another HookedModel; build the lens on the "
                             "model you run.")
        if self.top_k > model.d_vocab:
            raise InputError(f"top_k={self.top_k} exceeds the vocabulary size {model.d_vocab}.")
        super().bind(model)

    def start(self) -> None:
        self._records = {}
        self._masks = []
        self._first_site = None

    @torch.no_grad()
    def __call__(self, value: torch.Tensor, site: Site, ctx: ForwardContext) -> None:
        assert self.lens is not None
        name = site.name
        v = value.detach()
        if self.positions is not None:
            v = gather_positions(v, self.positions, ctx, "LensReadout")
        elif self._first_site in (None, name):  # one real-token mask per forward
            self._first_site = name
            self._masks.append(ctx.real.cpu())
        logp = torch.log_softmax(self.lens.logits(v, self.lens.reading_index(name)).float(), dim=-1)
        rec = self._records.setdefault(name, {})
        if self.log_probs:
            rec.setdefault("log_probs", []).append(logp.cpu())
        else:
            probs, ids = logp.topk(self.top_k, dim=-1)
            rec.setdefault("top_ids", []).append(ids.cpu())
            rec.setdefault("top_probs", []).append(probs.exp().cpu())
        return None

    # -- results ---------------------------------------------------------------------------------
    @property
    def readings(self) -> list[str]:
        """Reading names recorded so far, in depth order."""
        order = self.lens.readings if self.lens is not None else sorted(self._records)
        return [r for r in order if r in self._records]

    def __getitem__(self, reading: str) -> dict[str, torch.Tensor]:
        if self.lens is not None:
            reading = self.lens.readings[self.lens.reading_index(reading)]
        if reading not in self._records:
            raise InputError(f"Nothing recorded at {reading!r}; recorded: {', '.join(self.readings) or 'nothing'}.")
        return {k: torch.cat(v, dim=1) for k, v in self._records[reading].items()}

    @property
    def mask(self) -> torch.Tensor | None:
        """[batch, pos] real-token mask matching the recorded cells (positions=None only)."""
        return torch.cat(self._masks, dim=1) if self._masks else None

    def stack(self, key: str = "top_ids") -> torch.Tensor:
        """One tensor ``[n_readings, batch, pos, ...]`` of ``key`` over every recorded reading."""
        return torch.stack([self[r][key] for r in self.readings])

    def top_tokens(self, reading: str, row: int = 0) -> list[str]:
        """Top-1 token strings of one prompt at one reading (tokenizer needed)."""
        assert self.lens is not None
        tok = self.lens.model.tokenizer
        ids = self[reading]["top_ids"][row, :, 0].tolist()
        return [tok.decode([i]) if tok is not None else str(i) for i in ids]

    # -- serialisation ---------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.pop("site")
        cfg.update(lens=self.lens_ref, sites=list(self.site_kinds), top_k=self.top_k, log_probs=self.log_probs)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        if self.lens_ref is None:
            raise InputError("This LensReadout uses a tuned lens that was never saved; save the lens first "
                             "(lens.save(folder)) so the readout can refer to it.")
        return super().to_dict()

    @classmethod
    def from_config(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LensReadout:
        return cls(config["lens"], decode_positions(config.get("positions")), top_k=config.get("top_k", 5),
                   log_probs=config.get("log_probs", False), sites=config.get("sites", ["resid_post"]))
