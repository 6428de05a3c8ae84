"""The tuned-lens package's file format: exact import/export against the package itself, and bad files refused."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from tiny_models import build_tiny, random_ids

from lmscope.interventions import HookedModel, InputError, ModelMismatchError
from lmscope.lens import TunedLens
from lmscope.lens.formats import load_tuned_lens_folder, save_tuned_lens_folder

tuned_lens = pytest.importorskip("tuned_lens", reason="the tuned-lens==0.2.0 reference package (make test installs it)")


def _their_lens(hf: torch.nn.Module, seed: int = 0):
    from tuned_lens.nn import TunedLens as TheirLens

    lens = TheirLens.from_model(hf)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in lens.layer_translators:
            t.weight.copy_(0.05 * torch.randn(t.weight.shape, generator=g))
            t.bias.copy_(0.05 * torch.randn(t.bias.shape, generator=g))
    return lens


def _assert_same_logits(ours: TunedLens, theirs, model: HookedModel, ids: torch.Tensor) -> None:
    with torch.no_grad():
        hidden = model.hf_model(input_ids=ids, output_hidden_states=True).hidden_states
        for i in range(1, model.n_layers):  # their index i reads hidden_states[i] = our resid_post.(i-1)
            torch.testing.assert_close(ours.logits(hidden[i], f"resid_post.{i - 1}"), theirs(hidden[i], i),
                                       atol=1e-4, rtol=1e-4)


def test_import_equals_the_package_and_round_trips(llama_tiny: HookedModel, tmp_path: Path) -> None:
    theirs = _their_lens(llama_tiny.hf_model)
    theirs.save(tmp_path / "tl")
    theirs.to(llama_tiny.device)
    with pytest.warns(UserWarning, match="translator 0"):
        ours = load_tuned_lens_folder(tmp_path / "tl", llama_tiny)
    ids = random_ids((2, 7), 0)
    _assert_same_logits(ours, theirs, llama_tiny, ids)
    ours.save(tmp_path / "ours")  # and out again as lmscope's safetensors format
    again = TunedLens.load(tmp_path / "ours", llama_tiny)
    torch.testing.assert_close(again.weight, ours.weight)
    save_tuned_lens_folder(again, tmp_path / "back")  # and back to theirs, read by the package itself
    from tuned_lens.nn import TunedLens as TheirLens

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reread = TheirLens.from_model_and_pretrained(llama_tiny.hf_model, str(tmp_path / "back"))
    reread.to(llama_tiny.device)  # the package loads its translators on the CPU
    _assert_same_logits(ours, reread, llama_tiny, ids)


def test_another_model_is_refused(llama_tiny: HookedModel, tmp_path: Path) -> None:
    _their_lens(llama_tiny.hf_model).save(tmp_path / "tl")
    with pytest.raises(ModelMismatchError, match="3 layers and d_model 32.*this model has 4 and 32"):
        load_tuned_lens_folder(tmp_path / "tl", HookedModel(_deeper_llama()))
    same_shape = HookedModel(build_tiny("llama", seed=5))
    with pytest.raises(ModelMismatchError, match="unembedding hash"):
        load_tuned_lens_folder(tmp_path / "tl", same_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_tuned_lens_folder(tmp_path / "tl", same_shape, check_model=False)


def _deeper_llama() -> torch.nn.Module:
    from tiny_models import COMMON
    from transformers import AutoModelForCausalLM, LlamaConfig

    return AutoModelForCausalLM.from_config(LlamaConfig(**{**COMMON, "num_hidden_layers": 4})).eval()


def test_missing_layers_and_non_tensor_files(llama_tiny: HookedModel, tmp_path: Path) -> None:
    _their_lens(llama_tiny.hf_model).save(tmp_path / "tl")
    state = torch.load(tmp_path / "tl" / "params.pt", weights_only=True)
    del state["2.bias"]
    state["7.weight"] = torch.zeros(32, 32)
    torch.save(state, tmp_path / "tl" / "params.pt")
    with pytest.raises(InputError, match=r"missing \['2.bias'\], unexpected \['7.weight'\]"):
        load_tuned_lens_folder(tmp_path / "tl", llama_tiny, check_model=False)

    class Payload:
        def __reduce__(self):  # an object that would run code if unpickled
            return (print, ("unpickled!",))

    torch.save({"0.weight": Payload()}, tmp_path / "tl" / "params.pt")
    with pytest.raises(InputError, match="something other than tensors"):
        load_tuned_lens_folder(tmp_path / "tl", llama_tiny, check_model=False)
    (tmp_path / "tl" / "config.json").write_text(json.dumps({"lens_type": "linear_tuned_lens"}))
    with pytest.raises(InputError, match="d_model"):
        load_tuned_lens_folder(tmp_path / "tl", llama_tiny)
    with pytest.raises(InputError, match="not a tuned-lens package folder"):
        load_tuned_lens_folder(tmp_path / "nowhere", llama_tiny)


def test_export_refuses_what_the_format_cannot_hold(llama_tiny: HookedModel, tmp_path: Path) -> None:
    lens = TunedLens(llama_tiny)
    with torch.no_grad():
        lens.bias[-1].fill_(1.0)
    with pytest.raises(InputError, match="last reading is not the identity"):
        save_tuned_lens_folder(lens, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_lens_trained_by_the_package_on_smollm2(smollm: HookedModel, tmp_path: Path) -> None:
    """Train a few steps with tuned-lens's own modules on SmolLM2, save with its ``save``, load ours: same logits."""
    from tuned_lens.nn import TunedLens as TheirLens

    hf = smollm.hf_model
    theirs = TheirLens.from_model(hf).float().to(smollm.device)
    opt = torch.optim.SGD(theirs.parameters(), lr=0.5, momentum=0.9)
    ids = smollm.tokenize("The quick brown fox jumps over the lazy dog.").input_ids
    with torch.no_grad():
        out = hf(input_ids=ids, output_hidden_states=True)
    target = out.logits.log_softmax(-1)
    for _ in range(2):  # a few steps of the package's objective: KL(final || lens) summed over layers
        opt.zero_grad()
        loss = sum(torch.nn.functional.kl_div(theirs(out.hidden_states[i], i).log_softmax(-1), target,
                                              log_target=True, reduction="batchmean")
                   for i in (10, 20))
        loss.backward()
        opt.step()
    assert float(theirs[10].weight.detach().abs().sum()) > 0  # it did train
    theirs.save(tmp_path / "tl")
    ours = load_tuned_lens_folder(tmp_path / "tl", smollm)
    check = smollm.tokenize("Paris is the capital of").input_ids
    _assert_same_logits(ours, theirs, smollm, check)
