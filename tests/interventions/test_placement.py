"""accelerate placement: disk/CPU offload gives the in-memory results for every intervention kind; bad maps refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import build_tiny

from lmscope.interventions import Ablate, Cache, HookedModel, Patch, Steer
from lmscope.interventions.placement import PlacementError

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]


def _saved_llama(tmp_path: Path) -> Path:
    hf = build_tiny("llama").cpu()  # accelerate placement is tested from the CPU (offload to CPU and disk)
    hf.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _everything(model: HookedModel) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ivs = [Steer("resid_pre.1", torch.ones(model.d_model), positions=-1), Ablate("head_z.2", heads=[1]),
           Patch("resid_post.0", [[1, 2, 3, 4, 5, 6], [7, 8, 9]]), Cache(["resid_post.*", "head_z.2", "mlp_out.1"])]
    res = model.run(PROMPTS, ivs)
    return res.logits, {k: res.cache[k] for k in ("resid_post.2", "head_z.2", "mlp_out.1")}


def test_disk_offload_equals_in_memory(tmp_path: Path) -> None:
    path = _saved_llama(tmp_path)
    ref = HookedModel.from_pretrained(path)
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "disk"}
    off = HookedModel.from_pretrained(path, device_map=device_map, offload_folder=str(tmp_path / "offload"))
    assert any(p.device.type == "meta" for p in off.hf_model.model.layers[1].parameters())  # really offloaded
    assert off.device == torch.device("cpu")
    logits, cache = _everything(off)
    ref_logits, ref_cache = _everything(ref)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    for k in cache:
        torch.testing.assert_close(cache[k], ref_cache[k], atol=1e-5, rtol=0)
    gen = off.generate(PROMPTS[0], max_new_tokens=4, interventions=[Steer("resid_pre.2", torch.ones(32))])
    ref_gen = ref.generate(PROMPTS[0], max_new_tokens=4, interventions=[Steer("resid_pre.2", torch.ones(32))])
    assert gen.new_tokens.tolist() == ref_gen.new_tokens.tolist()


def test_meta_weights_without_offload_are_refused() -> None:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = build_tiny("llama").config
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config)
    with pytest.raises(PlacementError, match=r"model\.embed_tokens has weights on the meta device"):
        HookedModel(empty)


def test_placement_kwargs_reach_embedded_models_only_those(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmscope.interventions import InputError

    with pytest.raises(InputError, match="only device_map, offload_folder and max_memory"):
        HookedModel.from_pretrained("default", trust_remote_code=True)


@pytest.mark.slow
def test_smollm2_with_its_last_layers_on_disk(smollm: HookedModel, tmp_path: Path) -> None:
    device_map: dict[str, str] = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu",
                                  "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": "disk" if i >= 26 else "cpu" for i in range(30)})
    off = HookedModel.from_pretrained("default", device_map=device_map, offload_folder=str(tmp_path / "off"))
    assert all(p.device.type == "meta" for p in off.hf_model.model.layers[27].parameters())
    prompts = ["The capital of France is", "Hello there"]
    ivs = [Cache(["resid_post.27", "head_z.26"]), Steer("resid_pre.26", torch.ones(576), positions=-1),
           Ablate("head_z.27", heads=[0, 4])]
    got, ref = off.run(prompts, ivs), smollm.run(prompts, ivs)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=0)
    for site in ("resid_post.27", "head_z.26"):
        torch.testing.assert_close(got.cache[site], ref.cache[site], atol=1e-4, rtol=0)
