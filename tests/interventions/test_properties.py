"""Property-based: any site name, position spec or intervention list either works or raises an LmscopeError.

Never a raw exception, and never a hook (or an attention swap) left behind, whatever hypothesis generates.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (in the dev extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tiny_models import build_tiny  # noqa: E402

from lmscope.interventions import Ablate, Cache, Edit, HookedModel, Patch, Steer  # noqa: E402
from lmscope.interventions.backends import attention  # noqa: E402
from lmscope.interventions.errors import LmscopeError  # noqa: E402
from lmscope.interventions.sites import LAYER_SITES, MODEL_SITES  # noqa: E402

MODEL = HookedModel(build_tiny("llama"))
PROMPTS = [[5, 17, 3, 44], [8, 2]]
#: Derandomized: every run tries the same examples (a failure reproduces; no example database is kept).
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

kinds = st.sampled_from([*LAYER_SITES, *MODEL_SITES, "resid", "blocks", "", "RESID_POST"])
layers = st.one_of(st.integers(-6, 6).map(str), st.just("*"), st.text("0123456789-*x ", max_size=3))
site_names = st.one_of(
    st.builds(lambda k, sep, layer: f"{k}{sep}{layer}", kinds, st.sampled_from([".", "", "..", " "]), layers),
    kinds,
    st.text(max_size=12),
)
position_specs = st.recursive(
    st.one_of(st.none(), st.integers(-8, 8), st.sampled_from(["all", "prompt", "generated", "last", "x", ""]),
              st.builds(slice, st.none() | st.integers(-6, 6), st.none() | st.integers(-6, 6),
                        st.none() | st.integers(-2, 3)),
              st.floats(allow_nan=True), st.booleans()),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)


def hooks_left(model: HookedModel) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf_model.modules())


def assert_clean() -> None:
    assert hooks_left(MODEL) == 0
    assert MODEL.hf_model.config._attn_implementation == "sdpa"
    assert attention.idle()


def works_or_lmscope_error(fn: Any) -> None:
    try:
        fn()
    except LmscopeError:
        pass
    assert_clean()


@SETTINGS
@given(site_names)
def test_site_names(name: str) -> None:
    works_or_lmscope_error(lambda: MODEL.resolve(name))
    works_or_lmscope_error(lambda: MODEL.run(PROMPTS, [Cache(name)]))


@SETTINGS
@given(position_specs, st.sampled_from(["resid_post.1", "head_z.0", "attn_pattern.2", "logits"]))
def test_position_specs(spec: Any, site: str) -> None:
    works_or_lmscope_error(lambda: MODEL.run(PROMPTS, [Cache(site, positions=spec)]))
    works_or_lmscope_error(lambda: MODEL.run(PROMPTS, [Ablate(site, positions=spec)]))


def make_intervention(kind: str, site: str, positions: Any, scale: float) -> Any:
    d = MODEL.d_model
    if kind == "cache":
        return Cache(site, positions=positions)
    if kind == "steer":
        return Steer(site, torch.ones(d), scale, positions=positions)
    if kind == "ablate":
        return Ablate(site, positions=positions)
    if kind == "patch":
        return Patch(site, [[1, 2, 3, 4]], positions=positions)
    return Edit(site, lambda x: x * scale, positions=positions)


interventions = st.lists(
    st.builds(lambda *a: (a), st.sampled_from(["cache", "steer", "ablate", "patch", "edit"]),
              st.one_of(site_names, st.sampled_from(["resid_pre.0", "attn_pattern.1", "head_z.2", "mlp_out.*"])),
              position_specs, st.floats(allow_nan=True, allow_infinity=True, width=32)),
    max_size=4,
)


@SETTINGS
@given(interventions, st.booleans())
def test_intervention_lists(specs: list[tuple[Any, ...]], generate: bool) -> None:
    def go() -> None:
        ivs = [make_intervention(*s) for s in specs]
        if generate:
            MODEL.generate(PROMPTS, 2, interventions=ivs)
        else:
            MODEL.run(PROMPTS, ivs)
    works_or_lmscope_error(go)
