"""Every method at float32, bfloat16 and float16, on tiny random models cast with ``.to(dtype)``.

What each test pins down: the hooked run is the plain HF forward bit for bit in every dtype; the exact patching
sweep equals the ``Patch`` loop within the dtype's rounding (:mod:`lmscope.interventions.tolerance`); direct logit
attribution linearises the final norm and its terms sum to the model's own logit within that rounding; lens
statistics, fits, steering vectors and stored datasets are float32 (or the stored dtype asked for) whatever the
model's dtype, and equal what is computed by hand from the model's own cached values.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest
import torch
from tiny_models import TEST_DEVICE, build_tiny, on_device, random_ids, skip_lazy_miscompute

from lmscope.interventions import Cache, HookedModel, Steer
from lmscope.interventions.tolerance import assert_close, is_close, tolerance

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: LLaMA (RMSNorm), GPT-2 (LayerNorm, learned positions), GPT-NeoX (parallel block), Gemma 3 (sandwich norms,
#: 1+w RMSNorm, soft-capped logits): one of each kind of layer the dtype could trip.
ARCHS = ["llama", "gpt2", "gpt_neox", "gemma3_text"]
PROMPT = [3, 17, 42, 8, 55, 21]


def cast(name: str, dtype: torch.dtype, seed: int = 0) -> HookedModel:
    """Tiny model ``name`` built in float32 and cast with ``.to(dtype)`` (the same weights, rounded)."""
    return HookedModel(build_tiny(name, seed=seed).to(dtype))


@pytest.fixture(params=list(DTYPES))
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return DTYPES[request.param]


@pytest.fixture(params=ARCHS)
def model(request: pytest.FixtureRequest, dtype: torch.dtype, one_thread: None) -> HookedModel:
    return cast(request.param, dtype)


# -- the tolerance helper -----------------------------------------------------------------------------------------

def test_tolerance_follows_the_dtype_epsilon() -> None:
    r32, _ = tolerance(torch.float32)
    r16, _ = tolerance(torch.float16)
    rbf, _ = tolerance(torch.bfloat16)
    assert r32 < r16 < rbf  # bfloat16 has the fewest mantissa bits
    assert tolerance(torch.bfloat16, n_ops=8)[0] > rbf  # more roundings, more allowance
    x = torch.linspace(-3, 3, 101)
    # one rounding to each dtype passes at that dtype; bfloat16 rounding does not pass at float32
    for dt in DTYPES.values():
        assert is_close(x.to(dt).float(), x, dt, n_ops=1)
    assert not is_close(x.to(torch.bfloat16).float(), x, torch.float32)
    with pytest.raises(AssertionError, match="exceeds"):
        assert_close(x + 1, x, torch.bfloat16)
    with pytest.raises(AssertionError, match="exceeds"):
        assert_close(torch.tensor(float("nan")), 0.0)


# -- run, cache, lens ---------------------------------------------------------------------------------------------

def test_hooked_run_is_the_plain_forward(model: HookedModel, dtype: torch.dtype) -> None:
    ids = random_ids((2, 7), 1)
    with torch.no_grad():
        ref = model.hf_model(ids).logits
    res = model.run(ids, [Cache(["resid_post.*", "head_z.1", "attn_out.*"])])
    assert res.logits.dtype == dtype and res.cache["resid_post.0"].dtype == dtype
    assert torch.equal(res.logits, ref)  # hooks that read never change a bit, in any dtype


def test_logit_lens_last_reading_is_the_model(model: HookedModel, dtype: torch.dtype) -> None:
    from lmscope.lens import LogitLens

    ids = random_ids((1, 6), 2)
    traj = LogitLens(model).decode(ids, positions="last", top_k=3)[0]
    probs = model.run(ids).logits[0, -1].float().softmax(-1)
    assert traj.top_ids[-1, 0, 0] == int(probs.argmax())  # lens probabilities are float32
    assert traj.top_probs.dtype == torch.float32
    assert_close(traj.top_probs[-1, 0, 0], probs.max().cpu(), dtype, scale=1.0)


# -- patching -----------------------------------------------------------------------------------------------------

def test_exact_sweep_equals_loop_within_rounding(model: HookedModel, dtype: torch.dtype) -> None:
    from lmscope.probes.patching import patching_sweep

    clean = random_ids((6,), 1)
    corrupt = clean.clone()
    corrupt[1], corrupt[3] = (corrupt[1] + 5) % 97, (corrupt[3] + 11) % 97
    sites = ["embed", "resid_pre.*", "attn_out.1", "mlp_out.2"]
    metric = lambda logits: logits[:, 5] - logits[:, 7]  # noqa: E731
    sliding = bool(getattr(model.hf_model.config, "sliding_window", None))
    # Gemma 3's sliding windows make the exact method fall back to the loop, with a warning (then loop == loop)
    with pytest.warns(UserWarning, match="sliding-window") if sliding else contextlib.nullcontext():
        fast = patching_sweep(model, clean, corrupt, sites, [0, 2, 3, 5], metric, layer_block=2, position_block=2,
                              batch_size=5)
    slow = patching_sweep(model, clean, corrupt, sites, [0, 2, 3, 5], metric, method="loop")
    logits = model.run(clean[None]).logits[0, -1].float()
    # the metric is a difference of two logits: its rounding is on the logits' scale
    assert_close(fast.values, slow.values, dtype, scale=float(logits.abs().max()), msg="exact vs loop")
    assert fast.effect().abs().max() > 1e-3


# -- direct logit attribution -------------------------------------------------------------------------------------

def test_dla_terms_sum_to_the_logit_within_rounding(model: HookedModel, dtype: torch.dtype) -> None:
    from lmscope.probes.attribution import attribute

    skip_lazy_miscompute(model, "DLA")
    a = attribute(model, PROMPT, target=11)
    assert a.norm == {"llama": "rmsnorm", "gpt2": "layernorm", "gpt_neox": "layernorm",
                      "gemma3_text": "rmsnorm(1+w)"}[model.hf_model.config.model_type]
    magnitude = float(abs(a.embed) + a.attn.abs().sum() + a.mlp.abs().sum() + abs(a.constant))
    # every term is a float32 dot product of one rounded component; the model's logit rounds the residual once per
    # sublayer and the final norm's output once more, roundings that mostly cancel: a few roundings' allowance
    assert_close(a.total, a.logit, dtype, scale=magnitude, msg="block terms vs logit")
    assert_close(sum(a.terms().values()), a.logit, dtype, scale=magnitude, msg="finest terms vs logit")
    assert not torch.isnan(a.heads).any()  # the per-head split passed its dtype-aware check on every layer
    assert_close(a.heads.sum(1) + a.attn_bias, a.attn, dtype, scale=float(a.attn.abs().max()))
    assert a.head_positions is not None
    assert_close(a.head_positions.sum(-1), a.heads, dtype, scale=float(a.heads.abs().max()))


def test_dla_refuses_a_norm_of_another_form_in_every_dtype(dtype: torch.dtype) -> None:
    from lmscope.interventions.errors import UnsupportedArchitectureError
    from lmscope.probes.attribution import linearise_norm

    class Tripled(torch.nn.Module):  # RMSNorm times three: no candidate form fits, whatever the rounding
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(32, dtype=dtype))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 3 * self.weight * x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)

    with pytest.raises(UnsupportedArchitectureError, match=f"Cannot linearise the norm Tripled.*{dtype}"):
        linearise_norm(Tripled(), torch.randn(32, generator=torch.Generator().manual_seed(0)))


# -- steering vectors ---------------------------------------------------------------------------------------------

def test_steering_vectors_are_float32_means_of_the_model_values(model: HookedModel, dtype: torch.dtype) -> None:
    from lmscope.probes.steering import SteeringVector

    pos, neg = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11]], [[2, 2, 3, 9], [5, 7, 8], [8, 9, 1, 11]]
    sv = SteeringVector.from_pairs(model, pos, neg, layers=[1], method="mean")
    v = sv.vectors["resid_pre.1"]
    assert v.dtype == torch.float32
    rows = [model.run([p], [Cache("resid_pre.1", positions=-1)]).cache["resid_pre.1"][0, 0].double().cpu()
            for p in pos + neg]
    want = (torch.stack(rows[:3]) - torch.stack(rows[3:])).mean(0)
    # batched (padded) vs one-prompt runs round differently in low precision: a few roundings of the residual
    assert_close(v, want, dtype, scale=float(torch.stack(rows).abs().max()))
    act = SteeringVector.from_pairs(model, pos[:1], neg[:1], layers=[1], method="actadd").vectors["resid_pre.1"]
    assert act.dtype == torch.float32
    before = model.run([pos[0]]).logits
    after = model.run([pos[0]], sv.to_steer(scale=4.0, normalize=True)).logits
    assert after.dtype == dtype and not torch.equal(before, after)


# -- lens training ------------------------------------------------------------------------------------------------

@pytest.fixture
def corpus(tmp_path: Path):  # type: ignore[no-untyped-def]
    from lmscope.lens.training.corpus import Corpus

    rng = random.Random(0)
    words = "the cat sat on a mat and then it ran to the old house where seven dogs live".split()
    for i in range(4):
        (tmp_path / "docs" / f"d{i}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "docs" / f"d{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(400)))
    return Corpus.from_sources(tmp_path / "docs", heldout_fraction=0.25)


def test_lens_fit_is_float32_and_loads_on_a_low_precision_model(dtype: torch.dtype, corpus, tmp_path: Path,
                                                                one_thread: None) -> None:
    from safetensors import safe_open

    from lmscope.lens import TunedLens
    from lmscope.lens.training.evaluate import evaluate_lens
    from lmscope.lens.training.fit import train_tuned_lens

    model = cast("llama", dtype)
    lens = train_tuned_lens(model, corpus.train(), steps=2, seq_len=32, tokens_per_step=64, init_tokens=640,
                            progress=False)
    assert lens.weight.dtype == torch.float32 and torch.isfinite(lens.weight).all()
    lens.save(tmp_path / "lens")
    with safe_open(str(tmp_path / "lens" / "lens.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    kl = lambda lz: evaluate_lens(lz, corpus.heldout(), max_tokens=128, seq_len=32,  # noqa: E731
                                  compare_logit=False)["lenses"]["tuned"]["mean_kl"]
    assert kl(lens) < kl(TunedLens(model))  # the fit beats the zero (logit) lens in this dtype too
    # a float32 lens loads on the model in any dtype and decodes the same tokens within rounding
    f32 = cast("llama", torch.float32)
    back = TunedLens.load(tmp_path / "lens", f32)
    low, high = lens.decode([PROMPT], top_k=1)[0], back.decode([PROMPT], top_k=1)[0]
    assert low.top_probs.dtype == torch.float32
    assert_close(low.top_probs, high.top_probs, dtype)  # norm-wise, on the largest probability


# -- activation datasets and probes -------------------------------------------------------------------------------

def test_datasets_store_the_chosen_dtype_and_probes_read_float32(model: HookedModel, dtype: torch.dtype,
                                                                 tmp_path: Path) -> None:
    import numpy as np

    from lmscope.interventions import write_dataset
    from lmscope.probes.linear import probe_sweep

    prompts = [[int(t) for t in random_ids((5,), seed)] for seed in range(8)]
    labels = [i % 2 for i in range(8)]
    default = write_dataset(model, tmp_path / "default", prompts, ["resid_post.1"], labels)
    same = write_dataset(model, tmp_path / "same", prompts, ["resid_post.1"], labels,
                         dtype=str(dtype).removeprefix("torch."))
    assert default.dtype == "float32" and same.dtype == str(dtype).removeprefix("torch.")
    by_hand = model.run(prompts, [Cache("resid_post.1", positions=-1)]).cache["resid_post.1"][:, 0]
    # storing in float32 or in the model's own dtype is lossless: both equal the model's values bit for bit
    for ds in (default, same):
        assert np.array_equal(ds.array("resid_post.1"), by_hand.float().cpu().numpy())
    a, b = probe_sweep(default, cv=2, control=False), probe_sweep(same, cv=2, control=False)
    assert a.rows == b.rows


# -- binding and overthinking studies -----------------------------------------------------------------------------

def test_studies_run_in_low_precision_smoke(dtype: torch.dtype, one_thread: None) -> None:
    """Smoke test: both studies run end to end in every dtype and report finite numbers of the right shape (their
    results are checked in float32 by the binding and overthinking tests)."""
    from toys import FakeTokenizer, ToyTokenizer, binding_task, toy_task

    from lmscope.lens import LogitLens
    from lmscope.probes.binding import binding_study
    from lmscope.probes.overthinking.study import run_study

    model = HookedModel(build_tiny("llama_tied").to(dtype), ToyTokenizer())
    report = run_study(model, toy_task(), score_task=None, n_prompts=4, n_demos=3, lenses={"logit": LogitLens(model)},
                       top_k=2, n_random=2, batch_size=4, progress=False, figures=False).to_dict()
    acc = torch.tensor(report["tables"]["logit"]["true"]["acc"])
    assert acc.shape[0] == model.n_layers and torch.isfinite(acc).all()
    task = binding_task()
    binding = HookedModel(build_tiny("llama").to(dtype), FakeTokenizer())
    rep = binding_study(binding, [task], n_train=2, n_test=2, n_factorization=1, n_position=1, n_subspace=1,
                        grid=(0.0, 1.0), fractions=(0.0, 1.0), main_task="toy", progress=False)
    assert set(rep["tasks"]["toy"]) == {"baseline", "table_one"}


# -- lmscope serve ------------------------------------------------------------------------------------------------

def test_serve_decodes_a_low_precision_model_as_direct(dtype: torch.dtype, one_thread: None) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    import requests

    from lmscope.lens import LogitLens
    from lmscope.lens.serve.runner import ServerThread
    from lmscope.lens.serve.state import ServerState

    model = cast("llama", dtype)
    state = ServerState(model, {"logit": LogitLens(model)}, dtype=str(dtype).removeprefix("torch."))
    with ServerThread(state) as server:
        info = requests.get(server.url + "/api/v1/info", timeout=10).json()
        r = requests.post(server.url + "/api/v1/decode", json={"prompts": [PROMPT], "lens": "logit", "top_k": 3},
                          timeout=60)
    assert info["model"]["dtype"] == str(dtype).removeprefix("torch.")
    assert r.status_code == 200, r.text
    assert r.json()["trajectories"] == [t.to_dict() for t in state.lenses["logit"].decode([PROMPT], top_k=3)]


def test_steer_vector_is_cast_to_the_model_dtype(model: HookedModel, dtype: torch.dtype) -> None:
    v = on_device(torch.randn(model.d_model, generator=torch.Generator().manual_seed(0)))  # float32
    res = model.run([PROMPT], [Steer("resid_pre.1", v, scale=2.0), Cache("resid_pre.1")])
    base = model.run([PROMPT], [Cache("resid_pre.1")])
    assert res.cache["resid_pre.1"].dtype == dtype
    assert_close(res.cache["resid_pre.1"] - base.cache["resid_pre.1"], (2.0 * v).expand_as(base.cache["resid_pre.1"]),
                 dtype, 2, scale=float(res.cache["resid_pre.1"].abs().max()))
    assert TEST_DEVICE == str(res.cache["resid_pre.1"].device).split(":")[0]
