"""The versioned JSON schema of ``lmscope serve`` (requests, answers, limits).

``SCHEMA_VERSION`` changes whenever a field changes meaning or disappears; adding an optional field
keeps it. Every answer carries ``schema_version``; ``GET /api/v1/schema`` returns the JSON Schemas of
the request and answer bodies. The full description is in ``docs/serve.md``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for (answers beyond them are 4xx, never work done)."""

    max_body_bytes: int = 64 * 1024
    max_prompt_chars: int = 2000
    max_prompt_tokens: int = 256
    max_batch: int = 8
    max_top_k: int = 50
    max_targets: int = 8
    max_scale: float = 1000.0
    max_concurrent: int = 4
    max_ablate: int = 64  # heads ablated at once
    max_view_tokens: int = 128  # attention maps, DLA, neurons, lens cells
    max_pair_tokens: int = 64  # patching maps and circuit graphs (each prompt of the pair)
    max_ig_steps: int = 16
    max_graph_edges: int = 1000
    max_job_seconds: float = 300.0  # a heavy job past this is stopped (state "failed", the reason given)
    max_jobs_waiting: int = 8  # heavy jobs queued or running at once; more are refused (429)
    max_jobs_kept: int = 64  # finished jobs kept as the answer cache
    heavy_workers: int = 1  # threads computing heavy jobs (apart from the decode workers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


LIMITS = Limits()

Prompt = Union[str, list[int]]


def finite_scale(v: float) -> float:
    if not math.isfinite(v) or abs(v) > LIMITS.max_scale:
        raise ValueError(f"scale must be a finite number in [-{LIMITS.max_scale:g}, {LIMITS.max_scale:g}]")
    return v


class SteerSpec(BaseModel):
    """Apply a steering intervention set: a name given to ``lmscope serve --steer`` or a folder under ``--root``."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    scale: float = 1.0

    @field_validator("scale")
    @classmethod
    def _finite(cls, v: float) -> float:
        return finite_scale(v)


class SteerAt(BaseModel):
    """Steering of the workbench: the set ``name`` (a name given to ``--steer`` or a folder under ``--root``; a
    ``SteeringVector`` folder too) at ``layer`` (default: where it was saved) with ``scale`` in ``unit``:
    ``"resid"`` = the layer's typical residual norm along the vector's direction (like ``lmscope steer``),
    ``"raw"`` = the saved vector times ``scale``."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    layer: Union[int, None] = None
    scale: float = 0.0
    unit: Literal["resid", "raw"] = "resid"

    @field_validator("scale")
    @classmethod
    def _finite(cls, v: float) -> float:
        return finite_scale(v)


class InterventionsSpec(BaseModel):
    """Interventions every workbench view runs under: heads ablated (``[[layer, head], ...]``), how (``"zero"``, or
    ``"mean"``: each head's mean output over the tokens of ``mean_over``, default the request's own (clean)
    prompt), and one steering."""

    model_config = ConfigDict(extra="forbid")
    ablate: list[tuple[int, int]] = Field(default_factory=list, max_length=LIMITS.max_ablate)
    how: Literal["zero", "mean"] = "zero"
    mean_over: Union[Prompt, None] = None
    steer: Union[SteerAt, None] = None

    def active(self) -> bool:
        return bool(self.ablate) or (self.steer is not None and self.steer.scale != 0)


class DecodeRequest(BaseModel):
    """``POST /api/v1/decode``: decode prompts through one loaded lens (optionally under steering)."""

    model_config = ConfigDict(extra="forbid")
    prompts: list[Prompt] = Field(min_length=1, max_length=LIMITS.max_batch,
                                  description="texts, or token-id lists")
    lens: str = Field("logit", max_length=500, description="a name from GET /api/v1/info 'lenses'")
    top_k: int = Field(5, ge=1, le=LIMITS.max_top_k)
    positions: Union[Literal["all", "last"], list[int]] = Field("all", description="'all', 'last' or token indices")
    layers: Union[str, list[int], None] = Field(None, description="'0,5,10', '0-10', '-1', a list, or all")
    targets: list[Union[str, int]] = Field(default_factory=list, max_length=LIMITS.max_targets,
                                           description="single tokens (strings or ids) whose rank is tracked")
    mid: bool = Field(False, description="logit lens: also read resid_mid")
    steer: Union[SteerSpec, None] = None
    interventions: Union[InterventionsSpec, None] = Field(None, description="workbench interventions")

    @field_validator("prompts")
    @classmethod
    def _bounded(cls, prompts: list[Prompt]) -> list[Prompt]:
        for i, p in enumerate(prompts):
            size = len(p)
            if size == 0:
                raise ValueError(f"prompt {i} is empty")
            limit = LIMITS.max_prompt_chars if isinstance(p, str) else LIMITS.max_prompt_tokens
            if size > limit:
                raise ValueError(f"prompt {i} has {size} {'characters' if isinstance(p, str) else 'tokens'}; "
                                 f"the limit is {limit}")
        return prompts

    @field_validator("positions")
    @classmethod
    def _short(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > LIMITS.max_prompt_tokens:
            raise ValueError(f"at most {LIMITS.max_prompt_tokens} positions")
        return v


class DecodeAnswer(BaseModel):
    """Answer of ``/api/v1/decode``: one trajectory (``Trajectory.to_dict()``) per prompt, in order."""

    schema_version: int = SCHEMA_VERSION
    lens: str
    steer: Union[SteerSpec, None] = None
    trajectories: list[dict[str, Any]]
    seconds: float
    active: list[str] = Field(default_factory=list, description="the workbench interventions it ran under")


class CliDecodeRequest(BaseModel):
    """``POST /api/v1/cli/decode``: exactly the options of ``lmscope decode`` (answered with its stdout)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=1000)
    dtype: str = Field(max_length=20)
    device: str = Field(max_length=50)
    prompt: str = Field(min_length=1, max_length=LIMITS.max_prompt_chars)
    lens: str = Field(max_length=1000)
    top_k: int = Field(ge=1, le=LIMITS.max_top_k)
    positions: Literal["all", "last"]
    layers: Union[str, None] = Field(None, max_length=200)
    mid: bool = False
    target: Union[list[str], None] = Field(None, max_length=LIMITS.max_targets)
    json_output: bool = False


class CliDecodeAnswer(BaseModel):
    schema_version: int = SCHEMA_VERSION
    text: str
    seconds: float
