"""The nnsight backend gives the hooks backend's results for every intervention kind on every architecture."""

from __future__ import annotations

import pytest
import torch
from tiny_models import skip_on_lazy

from lmscope.interventions import Ablate, Cache, Edit, HookedModel, InputError, Patch, SiteError, Steer

pytest.importorskip("nnsight", reason="the nnsight extra (pip install 'lmscope[nnsight]')")

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
SOURCE = [[1, 2, 3, 4, 5, 6], [7, 8, 9]]


def _double(value: torch.Tensor) -> torch.Tensor:
    return value * 2


def _interventions(model: HookedModel) -> list[list]:
    kinds = model.available_kinds
    mid = ["resid_mid.1"] if "resid_mid" in kinds else []
    return [
        [Cache(["embed", "resid_pre.*", "attn_out.*", "mlp_out.*", "resid_post.*", "head_z.1", "final_norm",
                "logits", *mid])],
        [Steer("resid_pre.1", torch.ones(model.d_model), positions=-1), Cache(["resid_post.-1", "logits"])],
        [Ablate("head_z.-1", heads=[0, 2]), Ablate("mlp_out.0", positions=[0]), Cache("resid_post.*")],
        [Patch("resid_post.0", SOURCE), Patch("attn_out.-1", SOURCE, positions=-1), Cache("head_z.-1")],
        [Edit("mlp_out.1", _double), Steer("embed", torch.ones(model.d_model)), Cache(["resid_pre.1", *mid])],
        ([Steer(mid[0], torch.ones(model.d_model)), Cache(["resid_post.1", "attn_out.1"])] if mid else []),
    ]


def test_nnsight_equals_hooks(tiny: HookedModel) -> None:
    for ivs in _interventions(tiny):
        if not ivs:
            continue
        hooks = tiny.run(PROMPTS, ivs)
        nns = tiny.run(PROMPTS, ivs, backend="nnsight")
        torch.testing.assert_close(nns.logits, hooks.logits, atol=1e-5, rtol=0)
        assert set(nns.cache) == set(hooks.cache)
        for name in hooks.cache:
            torch.testing.assert_close(nns.cache[name], hooks.cache[name], atol=1e-5, rtol=0)


def test_model_default_backend_and_errors(llama_tiny: HookedModel) -> None:
    model = HookedModel(llama_tiny.hf_model, backend="nnsight")
    ref = llama_tiny.run(PROMPTS, [Steer("resid_pre.-1", torch.ones(32))]).logits
    torch.testing.assert_close(model.run(PROMPTS, [Steer("resid_pre.-1", torch.ones(32))]).logits, ref,
                               atol=1e-5, rtol=0)
    with pytest.raises(SiteError, match="attn_pattern is not available with backend='nnsight'"):
        model.run(PROMPTS, [Cache("attn_pattern.0")])
    with pytest.raises(InputError, match="Unknown backend 'tl'"):
        llama_tiny.run(PROMPTS, backend="tl")
    with pytest.raises(InputError, match="remote=True .* backend='nnsight'"):
        llama_tiny.run(PROMPTS, remote=True)


def test_remote_is_refused_up_front(llama_tiny: HookedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmscope.interventions.backends.nnsight import RemoteError

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    with pytest.raises(RemoteError, match="Edit runs arbitrary Python"):
        llama_tiny.run(PROMPTS, [Edit("resid_pre.1", _double)], backend="nnsight", remote=True)
    import nnsight

    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None, raising=False)
    with pytest.raises(RemoteError, match="needs an NDIF API key"):
        llama_tiny.run(PROMPTS, [Steer("resid_pre.1", torch.ones(32))], backend="nnsight", remote=True)


def _word_tokenizer():
    """A word-level tokenizer over the tiny vocabulary (nnsight's LanguageModel wraps model + tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({f"t{i}": i for i in range(97)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="t0", pad_token="t0")


def test_remote_needs_a_model_ndif_hosts(llama_tiny: HookedModel, monkeypatch: pytest.MonkeyPatch,
                                         tmp_path) -> None:
    """A model with no Hugging Face id (in memory, or loaded from a folder) is refused before any request."""
    from lmscope.interventions.backends.nnsight import RemoteError

    monkeypatch.setenv("NDIF_API_KEY", "not-a-real-key")
    steer = [Steer("resid_pre.1", torch.ones(32)), Cache("resid_post.0")]
    with pytest.raises(RemoteError, match="has no Hugging Face id"):
        llama_tiny.run(PROMPTS, steer, backend="nnsight", remote=True)
    llama_tiny.hf_model.name_or_path = str(tmp_path)  # an existing local folder
    with pytest.raises(RemoteError, match="was loaded from"):
        llama_tiny.run(PROMPTS, steer, backend="nnsight", remote=True)


def test_remote_request_without_network_is_a_remote_error(llama_tiny: HookedModel,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With a key and a hub id the request is really built and sent (never run locally instead); with no
    network (name resolution fails, simulated so the test is the same on a connected machine) it is a
    RemoteError naming the network, and lmscope is registered to ship by value."""
    import socket

    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES

    from lmscope.interventions.backends.nnsight import RemoteError

    def offline(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setenv("NDIF_API_KEY", "not-a-real-key")
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    llama_tiny.hf_model.name_or_path = "EleutherAI/pythia-160m"
    llama_tiny.tokenizer = _word_tokenizer()
    seen = Cache("resid_post.0")
    with pytest.raises(RemoteError, match="could not be reached.*remote=False"):
        llama_tiny.run(PROMPTS, [Steer("resid_pre.1", torch.ones(32)), seen], backend="nnsight", remote=True)
    assert "lmscope" in _PICKLE_BY_VALUE_MODULES
    with pytest.raises(KeyError):
        seen.cache["resid_post.0"]  # nothing ran locally in its place


def _as_hub_model(model: HookedModel) -> HookedModel:
    """Give a tiny model what a remote run needs: a Hugging Face id and a tokenizer (no download happens)."""
    skip_on_lazy("lazy tensors cannot be pickled into a request (CUDA tensors can)")
    model.hf_model.name_or_path = "EleutherAI/pythia-160m"
    model.tokenizer = _word_tokenizer()
    return model


def test_remote_dry_run_equals_hooks(tiny: HookedModel) -> None:
    """``remote="local"``: nnsight serialises the request exactly as for NDIF, deserialises it with lmscope
    hidden (as on a server, so lmscope's code ships by value) and runs it here. Logits and every cached site
    equal the hooks backend, and the caches came back from the server's copies of the interventions."""
    model = _as_hub_model(tiny)
    mid = ["resid_mid.1"] if "resid_mid" in model.available_kinds else []
    ivs = [Steer("resid_pre.1", torch.ones(model.d_model), positions=-1), Ablate("head_z.-1", heads=[0, 2]),
           Patch("resid_post.0", SOURCE), Cache(["resid_post.*", "head_z.1", "logits", *mid])]
    hooks = model.run(PROMPTS, ivs)
    dry = model.run(PROMPTS, ivs, backend="nnsight", remote="local")
    torch.testing.assert_close(dry.logits, hooks.logits, atol=1e-5, rtol=0)
    assert sorted(dry.cache) == sorted(hooks.cache)
    for name in hooks.cache:
        torch.testing.assert_close(dry.cache[name], hooks.cache[name], atol=1e-5, rtol=0)


def test_remote_dry_run_brings_lens_readouts_back(llama_tiny: HookedModel) -> None:
    from lmscope.lens import LensReadout, LogitLens

    model = _as_hub_model(llama_tiny)
    here, there = LensReadout(LogitLens(model), top_k=3), LensReadout(LogitLens(model), top_k=3)
    model.run(PROMPTS, [here])
    model.run(PROMPTS, [there], backend="nnsight", remote="local")
    for name in ("resid_post.0", "resid_post.2"):
        assert torch.equal(there[name]["top_ids"], here[name]["top_ids"])


def test_remote_refuses_readers_whose_records_cannot_come_back(llama_tiny: HookedModel) -> None:
    from lmscope.interventions.backends.nnsight import RemoteError

    class Counter(Cache):
        session_fields = ()  # records into itself, but would leave them on the server

    with pytest.raises(RemoteError, match="Counter records into itself but lists no session_fields"):
        _as_hub_model(llama_tiny).run(PROMPTS, [Counter("resid_post.0")], backend="nnsight", remote="local")
    with pytest.raises(InputError, match="remote must be False, True .* or 'local'"):
        llama_tiny.run(PROMPTS, [Cache("resid_post.0")], backend="nnsight", remote="yes")


@pytest.mark.slow
def test_nnsight_equals_hooks_on_smollm2(smollm: HookedModel) -> None:
    prompts = ["The capital of France is", "Hello"]
    ivs = [Steer("resid_pre.10", torch.ones(576), positions=-1), Ablate("head_z.20", heads=[3]),
           Cache(["resid_post.*", "head_z.20", "resid_mid.15"])]
    hooks, nns = smollm.run(prompts, ivs), smollm.run(prompts, ivs, backend="nnsight")
    torch.testing.assert_close(nns.logits, hooks.logits, atol=1e-4, rtol=0)
    for name in hooks.cache:
        torch.testing.assert_close(nns.cache[name], hooks.cache[name], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_remote_dry_run_on_smollm2_ships_code_not_weights(smollm: HookedModel,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The NDIF request for SmolLM2 (under its hub id) reproduces the hooks backend, and its payload is
    lmscope's code and the inputs: a few hundred kB, not the 540 MB of weights."""
    skip_on_lazy("lazy tensors cannot be pickled into a request (CUDA tensors can)")
    from nnsight.schema.request import RequestModel

    sizes: list[int] = []
    serialize = RequestModel.serialize

    def measured(*args: object, **kwargs: object) -> bytes:
        blob = serialize(*args, **kwargs)
        sizes.append(len(blob))
        return blob
    monkeypatch.setattr(RequestModel, "serialize", measured)
    # a model of its own: nnsight's remote wrapper patches the forwards of the model it wraps, and the session's
    # shared SmolLM2 must stay unwrapped for the fast paths the later tests exercise
    own = HookedModel.default()
    monkeypatch.setattr(own.hf_model, "name_or_path", "HuggingFaceTB/SmolLM2-135M-Instruct")
    ivs = [Steer("resid_pre.10", torch.ones(576), positions=-1), Ablate("head_z.20", heads=[3]),
           Cache(["resid_post.29", "head_z.20"])]
    prompts = ["The capital of France is", "Hello"]
    hooks, dry = smollm.run(prompts, ivs), own.run(prompts, ivs, backend="nnsight", remote="local")
    torch.testing.assert_close(dry.logits, hooks.logits, atol=1e-4, rtol=0)
    for name in hooks.cache:
        torch.testing.assert_close(dry.cache[name], hooks.cache[name], atol=1e-4, rtol=0)
    assert len(sizes) == 1 and sizes[0] < 5_000_000, sizes


def test_lens_readouts_and_method_interventions_equal_hooks(tiny: HookedModel) -> None:
    """Beyond the core kinds: a LensReadout and a method's intervention (the binding study's BindingShift)
    give the hooks backend's results through nnsight; pattern-writing ones are refused by name."""
    from lmscope.lens import LensReadout, LogitLens
    from lmscope.probes.binding import BindingShift
    from lmscope.probes.overthinking import HeadQKVAblate

    delta = torch.randn(2, 2, tiny.d_model, generator=torch.Generator().manual_seed(0))
    shift = BindingShift(delta, [0, 2], plus=[[(1, 3)], [(0, 2)]], minus=[[(3, 5)], []])
    here, there = LensReadout(LogitLens(tiny), top_k=3), LensReadout(LogitLens(tiny), top_k=3)
    hooks = tiny.run(PROMPTS, [shift, here])
    nns = tiny.run(PROMPTS, [shift, there], backend="nnsight")
    torch.testing.assert_close(nns.logits, hooks.logits, atol=1e-5, rtol=0)
    assert here.readings and there.readings == here.readings
    for name in here.readings:
        assert torch.equal(there[name]["top_ids"], here[name]["top_ids"])
        torch.testing.assert_close(there[name]["top_probs"], here[name]["top_probs"], atol=1e-5, rtol=0)
    if "attn_pattern" in tiny.available_kinds:
        with pytest.raises(SiteError, match="attn_pattern is not available with backend='nnsight'"):
            tiny.run(PROMPTS, [HeadQKVAblate([(1, 0)])], backend="nnsight")


def test_a_local_nnsight_run_leaves_the_shared_model_untouched(llama_tiny: HookedModel) -> None:
    """nnsight wraps every module's forward; it wraps a copy of the module objects, so the model's own modules (and
    the fast partial forwards that need them unwrapped) are as before, and results stay equal."""
    from lmscope.interventions.partial import partial_forward_unsupported

    model = llama_tiny
    hooks = model.run(PROMPTS, [Cache("resid_post.1")])
    got = model.run(PROMPTS, [Cache("resid_post.1")], backend="nnsight")
    assert [name for name, m in model.hf_model.named_modules() if "forward" in m.__dict__] == []
    assert partial_forward_unsupported(model, 8) is None
    torch.testing.assert_close(got.cache["resid_post.1"], hooks.cache["resid_post.1"], atol=1e-5, rtol=0)
