"""Request and answer bodies of the workbench views (one versioned API call per view), and ``GET /api/v1/schema``.

Light views (lens cell, attention, attribution, neurons) answer at once; heavy ones (patching maps, circuit
graph, flow routes) answer a :class:`JobAnswer` and run as jobs (``lens/serve/jobs.py``). Every request may
carry ``interventions`` (:class:`~lmscope.lens.serve.schema.InterventionsSpec`) and every answer says which were
``active``. Numbers that are undefined (NaN: a head score with no qualifying query, a masked pre-softmax score)
are ``null`` in JSON. Full description: ``docs/serve.md``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .schema import (
    LIMITS,
    SCHEMA_VERSION,
    CliDecodeAnswer,
    CliDecodeRequest,
    DecodeAnswer,
    DecodeRequest,
    InterventionsSpec,
    Prompt,
)

Token = Union[str, int]
Floats = list[Union[float, None]]


def bounded_prompt(p: Prompt, tokens: int, what: str = "prompt") -> Prompt:
    """``p`` when it is not empty and within the characters / token-ids limits."""
    if len(p) == 0:
        raise ValueError(f"the {what} is empty")
    limit = LIMITS.max_prompt_chars if isinstance(p, str) else tokens
    if len(p) > limit:
        raise ValueError(f"the {what} has {len(p)} {'characters' if isinstance(p, str) else 'tokens'}; "
                         f"the limit is {limit}")
    return p


def nulls(x: Any) -> Any:
    """Nested lists of floats with NaN/inf (and -3.4e38 mask values) as None, for strict JSON."""
    if isinstance(x, list):
        return [nulls(v) for v in x]
    if isinstance(x, float) and (not math.isfinite(x) or abs(x) > 1e30):
        return None
    return x


class ViewRequest(BaseModel):
    """A view of one prompt (a string or token ids) under optional interventions."""

    model_config = ConfigDict(extra="forbid")
    prompt: Prompt
    interventions: Union[InterventionsSpec, None] = None

    @field_validator("prompt")
    @classmethod
    def _bounded(cls, p: Prompt) -> Prompt:
        return bounded_prompt(p, LIMITS.max_view_tokens)


class Answer(BaseModel):
    schema_version: int = SCHEMA_VERSION
    active: list[str] = Field(default_factory=list, description="the interventions this answer ran under")
    seconds: float = 0.0


class CellRequest(ViewRequest):
    """``POST /api/v1/lens/cell``: one lens cell's top-k and the tokens its reading promoted and suppressed."""

    lens: str = Field("logit", max_length=500)
    reading: Union[int, str] = Field(description="reading index or site name ('resid_post.5')")
    position: int = -1
    top_k: int = Field(10, ge=1, le=LIMITS.max_top_k)


class CellAnswer(Answer):
    lens: str
    change: dict[str, Any] = Field(description="LayerChange.to_dict(): reading, previous, top, promoted, suppressed")


class AttentionRequest(ViewRequest):
    """``POST /api/v1/attention``: every head's pattern at ``layer`` (and the pre-softmax scores with ``scores``)."""

    layer: int
    scores: bool = False


class AttentionAnswer(Answer):
    layer: int
    tokens: list[str]
    n_heads: int
    pattern: list[list[list[float]]] = Field(description="[head][query][key] attention probabilities")
    scores: Union[list[list[list[Union[float, None]]]], None] = Field(
        None, description="[head][query][key] pre-softmax scores (null where masked)")
    head_scores: dict[str, Floats] = Field(description="kind -> [head]: on this prompt (null: no query qualifies)")
    repeated_scores: dict[str, Floats] = Field(description="kind -> [head]: on repeated random tokens")


class AttributionRequest(ViewRequest):
    """``POST /api/v1/attribution``: direct logit attribution of ``target`` (minus ``contrast``) at the last token."""

    target: Token
    contrast: Union[Token, None] = None
    per_position: bool = False


class AttributionAnswer(Answer):
    target: int
    contrast: Union[int, None]
    labels: list[Union[str, None]]
    tokens: list[str]
    logit: float
    total: float
    embed: float
    constant: float
    attn: Floats
    attn_bias: Floats
    mlp: Floats
    heads: list[Floats] = Field(description="[layer][head] (null where a layer cannot be split)")
    head_positions: Union[list[list[Floats]], None] = None
    top: list[tuple[str, float]]
    notes: list[str]


class NeuronsRequest(ViewRequest):
    """``POST /api/v1/neurons``: DLA of each neuron of the MLP at ``layer``; the ``top_k`` by |DLA| and |activation|."""

    layer: int
    target: Token
    contrast: Union[Token, None] = None
    top_k: int = Field(10, ge=1, le=LIMITS.max_top_k)


class NeuronsAnswer(Answer):
    neurons: dict[str, Any] = Field(description="NeuronAttribution.to_dict(k)")


class PairRequest(BaseModel):
    """A clean/corrupt pair (same token length) and the metric ``logit(target) - logit(distractor)`` (the target's
    log-probability without a distractor). ``wait``: answer when the job is done (within the time limit)."""

    model_config = ConfigDict(extra="forbid")
    prompt: Prompt = Field(description="the clean prompt")
    corrupt: Prompt
    target: Token
    distractor: Union[Token, None] = None
    interventions: Union[InterventionsSpec, None] = None
    wait: bool = False

    @field_validator("prompt", "corrupt")
    @classmethod
    def _bounded(cls, p: Prompt) -> Prompt:
        return bounded_prompt(p, LIMITS.max_pair_tokens)


class PatchingRequest(PairRequest):
    """``POST /api/v1/patching``: the exact ``resid_pre`` x position map and the per-head map (a job)."""


class GraphRequest(PairRequest):
    """``POST /api/v1/graph``: the ``edges`` top-scored edges of the pair's edge-level circuit (a job)."""

    method: Literal["eap-ig", "eap"] = "eap-ig"
    ig_steps: int = Field(5, ge=1, le=LIMITS.max_ig_steps)
    edges: int = Field(200, ge=1, le=LIMITS.max_graph_edges)


class FlowRequest(ViewRequest):
    """``POST /api/v1/flow``: the information-flow routes to the prediction at ``position`` (a job)."""

    threshold: float = Field(0.04, gt=0, lt=1)
    position: int = -1
    wait: bool = False


class JobAnswer(BaseModel):
    """A heavy job: ``GET /api/v1/jobs/ID`` polls it, ``DELETE`` cancels it; ``result`` once ``state`` is done."""

    schema_version: int = SCHEMA_VERSION
    job: str
    kind: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: float
    message: str
    cached: bool
    seconds: float
    result: Union[dict[str, Any], None] = None
    error: Union[str, None] = None


class TaskAnswer(BaseModel):
    """``GET /api/v1/tasks/ioi``: ready-made IOI pairs for this model (``ioi_pairs(model).to_dict()``)."""

    schema_version: int = SCHEMA_VERSION
    name: str
    pairs: list[dict[str, Any]]


VIEW_BODIES: dict[str, Any] = {
    "DecodeRequest": DecodeRequest, "DecodeAnswer": DecodeAnswer, "CliDecodeRequest": CliDecodeRequest,
    "CliDecodeAnswer": CliDecodeAnswer, "CellRequest": CellRequest, "CellAnswer": CellAnswer,
    "AttentionRequest": AttentionRequest, "AttentionAnswer": AttentionAnswer, "AttributionRequest": AttributionRequest,
    "AttributionAnswer": AttributionAnswer, "NeuronsRequest": NeuronsRequest, "NeuronsAnswer": NeuronsAnswer,
    "PatchingRequest": PatchingRequest, "GraphRequest": GraphRequest, "FlowRequest": FlowRequest,
    "JobAnswer": JobAnswer, "TaskAnswer": TaskAnswer}


def schemas() -> dict[str, Any]:
    """JSON Schemas of every request and answer body (``GET /api/v1/schema``)."""
    return {"schema_version": SCHEMA_VERSION, "limits": LIMITS.to_dict(),
            "bodies": {name: m.model_json_schema() for name, m in VIEW_BODIES.items()}}
