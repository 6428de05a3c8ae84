"""Steering scales with a unit (issue 21): the layer's typical residual norm, outlier tokens left out of it and
of ``token="mean"`` vectors; ``generation_sweep`` (scales x prompts -> texts); ``lmscope steer`` with several scales."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import torch

from lmscope.interventions import Cache, Edit, HookedModel, InputError, Steer
from lmscope.interventions.cli import _join_negative_values
from lmscope.interventions.collect import collect_activations, inlier_mask
from lmscope.probes.steering import GenerationSweep, SteeringVector, generation_sweep
from lmscope.probes.steering.cli import parse_scales
from lmscope.probes.steering.scale import typical_norms

POS = [[1, 2, 3, 4, 5], [5, 6, 7, 9], [8, 9, 10, 11, 12, 13]]
NEG = [[2, 2, 3, 9, 4], [5, 7, 8, 1], [8, 9, 1, 11, 13, 3]]
ROOT = Path(__file__).resolve().parents[3]


def _sink(model: HookedModel) -> Edit:
    """An artificial attention-sink outlier: position 0's residual is 1000x its embedding from layer 0 on (so it
    differs between prompts with different first tokens, as a real sink's does)."""
    return Edit("resid_pre.0", _times_1000, positions=0)


def _times_1000(value: torch.Tensor) -> torch.Tensor:
    return value * 1000


def test_inlier_mask_drops_outliers_and_padding() -> None:
    values = torch.ones(2, 4, 3)
    values[0, 0] *= 50  # a sink at row 0, position 0
    values[1, 3] *= 2   # within 3x the median: kept
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    keep = inlier_mask(values, mask, 3.0)
    assert keep.tolist() == [[False, True, True, True], [False, True, True, True]]
    assert inlier_mask(values, mask, None).tolist() == mask.bool().tolist()


def test_mean_token_vectors_leave_the_sink_out(llama_tiny: HookedModel) -> None:
    site = "resid_pre.2"
    with llama_tiny.apply(_sink(llama_tiny)):
        sv = SteeringVector.from_pairs(llama_tiny, POS, NEG, layers=[2], method="mean", token="mean")
        kept_all = SteeringVector.from_pairs(llama_tiny, POS, NEG, layers=[2], method="mean", token="mean",
                                             outliers=None)
        diffs = []
        for p, n in zip(POS, NEG):
            hp, hn = (llama_tiny.run([x], Cache(site)).cache[site][0].float().cpu() for x in (p, n))
            assert float(hp[0].norm()) > 5 * float(hp[1:].norm(dim=-1).max())  # the sink is there
            diffs.append(hp[1:].mean(0) - hn[1:].mean(0))
    torch.testing.assert_close(sv[2], torch.stack(diffs).mean(0), rtol=1e-4, atol=1e-4)
    assert float(kept_all[2].norm()) > 5 * float(sv[2].norm())  # the old average: dominated by position 0
    assert sv.metadata["mean_outlier_factor"] == 3.0


def test_collect_activations_mean_without_outliers_is_unchanged(llama_tiny: HookedModel) -> None:
    a = collect_activations(llama_tiny, POS, ["resid_pre.1"], token="mean", outliers=None)
    res = llama_tiny.run(POS, Cache("resid_pre.1"))
    want = torch.stack([res.cache.unpad("resid_pre.1", i).float().mean(0).cpu() for i in range(len(POS))])
    torch.testing.assert_close(a["resid_pre.1"], want, rtol=1e-5, atol=1e-5)


def test_typical_norm_is_the_mean_norm_of_inlier_tokens(llama_tiny: HookedModel) -> None:
    prompts = POS + NEG
    with llama_tiny.apply(_sink(llama_tiny)):
        norms, left_out = typical_norms(llama_tiny, prompts, ["resid_pre.2"], batch_size=4)
        res = llama_tiny.run(prompts, Cache("resid_pre.2"))
    rows = [res.cache.unpad("resid_pre.2", i).float().norm(dim=-1)[1:] for i in range(len(prompts))]
    assert left_out == {"resid_pre.2": len(prompts)}  # exactly the sinks
    assert norms["resid_pre.2"] == pytest.approx(float(torch.cat(rows).mean()), rel=1e-5)


def test_to_steer_in_resid_units(llama_tiny: HookedModel, tmp_path: Path) -> None:
    sv = SteeringVector.from_pairs(llama_tiny, POS, NEG, layers=[1, 2], method="mean")
    assert set(sv.resid_norms) == {"resid_pre.1", "resid_pre.2"} and all(n > 0 for n in sv.resid_norms.values())
    for st in sv.to_steer(0.5, unit="resid"):
        site = st.site_spec
        assert float((st.scale * st.vector).norm()) == pytest.approx(0.5 * sv.resid_norms[site], rel=1e-5)
        torch.testing.assert_close(st.vector / st.vector.norm(), sv.direction(site))
    # the same push as raw steering by scale * resid_norm / |v|
    raw = [Steer(s, sv[s], 0.5 * sv.resid_norms[s] / float(sv[s].norm())) for s in sv.sites]
    ids = [[3, 4, 5, 6]]
    torch.testing.assert_close(llama_tiny.run(ids, sv.to_steer(0.5, unit="resid")).logits,
                               llama_tiny.run(ids, raw).logits, rtol=1e-5, atol=1e-5)
    sv.save(tmp_path / "sv")
    assert SteeringVector.load(tmp_path / "sv", model=llama_tiny).resid_norms == sv.resid_norms
    bare = SteeringVector(dict(sv.vectors))
    with pytest.raises(InputError, match="measure_resid_norms"):
        bare.to_steer(1.0, unit="resid")
    with pytest.raises(InputError, match="unit must be one of raw, resid"):
        sv.to_steer(1.0, unit="norm")
    assert bare.measure_resid_norms(llama_tiny, POS + NEG).resid_norms == pytest.approx(sv.resid_norms)


@pytest.mark.parametrize("method,token", [("mean", -1), ("mean", "mean"), ("logistic", -1)])
def test_from_pairs_measures_the_norms_in_its_own_forwards(llama_tiny: HookedModel, method: str,
                                                           token: int | str) -> None:
    """The typical norms come from the forwards that collect the pairs (one forward per batch, none extra), and
    equal a separate measurement."""
    calls = []
    handle = llama_tiny.hf_model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        sv = SteeringVector.from_pairs(llama_tiny, POS, NEG, layers=[1, 2], method=method, token=token,
                                       batch_size=2)
    finally:
        handle.remove()
    assert len(calls) == 2  # 3 pairs in batches of 2 pairs; before, a second pass measured the norms (4)
    separate = SteeringVector(dict(sv.vectors)).measure_resid_norms(llama_tiny, POS + NEG)
    assert sv.resid_norms == pytest.approx(separate.resid_norms, rel=1e-5)
    assert sv.metadata["resid_norm_outliers_left_out"] == separate.metadata["resid_norm_outliers_left_out"]


def test_generation_sweep_matches_generate(llama_tiny: HookedModel) -> None:
    sv = SteeringVector.from_pairs(llama_tiny, POS, NEG, layers=[1], method="mean")
    prompts = [[1, 2, 3], [4, 5, 6, 7]]
    sweep = generation_sweep(llama_tiny, sv, [-2, 0, 2], prompts, max_new_tokens=5, unit="resid")
    assert isinstance(sweep, GenerationSweep) and sweep.scales == [-2.0, 0.0, 2.0] and len(sweep.texts) == 3
    plain = llama_tiny.generate(prompts, 5).new_tokens
    assert sweep.texts[1] == [" ".join(map(str, r.tolist())) for r in plain]  # scale 0: unsteered
    steered = llama_tiny.generate(prompts, 5, interventions=sv.to_steer(2, unit="resid")).new_tokens
    assert sweep.text(2.0, 1) == " ".join(map(str, steered[1].tolist()))
    assert sweep.texts[2] != sweep.texts[1]
    md = sweep.to_markdown().splitlines()
    assert md[0] == "| scale (x typical residual norm) | prompt | continuation |" and len(md) == 2 + 3 * 2
    # a plain Steer: the sweep's scale multiplies its own
    st = Steer("resid_pre.1", sv[1], scale=0.5)
    by_steer = generation_sweep(llama_tiny, st, [4.0], prompts, max_new_tokens=5)
    want = llama_tiny.generate(prompts, 5, interventions=Steer("resid_pre.1", sv[1], scale=2.0)).new_tokens
    assert by_steer.texts[0] == [" ".join(map(str, r.tolist())) for r in want]
    with pytest.raises(InputError, match="scales is empty"):
        generation_sweep(llama_tiny, sv, [], prompts)
    with pytest.raises(InputError, match="apply to a SteeringVector"):
        generation_sweep(llama_tiny, st, [1.0], prompts, unit="resid")


def test_cli_scale_lists() -> None:
    assert parse_scales("8") == [8.0] and parse_scales("-1,0,0.5") == [-1.0, 0.0, 0.5]
    assert _join_negative_values(["steer", "--scale", "-0.5,0,0.5", "x"]) == ["steer", "--scale=-0.5,0,0.5", "x"]
    with pytest.raises(InputError, match="comma-separated numbers"):
        parse_scales("a,b")


def _readme_steer_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [line.split("#")[0].strip() for line in text.splitlines() if line.strip().startswith("lmscope steer")]


def test_readme_steer_examples_use_shipped_pairs_or_existing_files() -> None:
    commands = _readme_steer_commands()
    assert commands
    for cmd in commands:
        argv = shlex.split(cmd)
        pairs = argv[argv.index("--pairs") + 1]
        assert pairs == "sentiment" or (ROOT / pairs).is_file(), cmd


@pytest.mark.slow
def test_readme_steer_examples_run_and_steer(use_smollm: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's ``lmscope steer`` lines run as written on SmolLM2; the steered text is not a repetition loop."""
    from lmscope.interventions.cli import main

    for cmd in _readme_steer_commands():
        assert main(shlex.split(cmd)[1:]) == 0, cmd
        out = capsys.readouterr().out
        assert "typical residual norm" in out, out
        words = out.split()
        assert max(words.count(w) for w in set(words) if w.isalpha()) < 12, out  # no "and and and..."
