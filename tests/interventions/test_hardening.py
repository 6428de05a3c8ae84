"""Bad inputs get specific lmscope errors: out-of-vocabulary ids, non-finite steering, damaged artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmscope.interventions import HookedModel, Steer, load_interventions, save_interventions
from lmscope.interventions.artifacts import load_artifact, save_artifact
from lmscope.interventions.errors import ArtifactError, InputError


def test_token_id_outside_vocabulary(llama_tiny: HookedModel) -> None:
    n = llama_tiny.hf_model.get_input_embeddings().num_embeddings
    for bad in ([[1, n, 2]], [[3, -1]], torch.tensor([[n + 5]])):
        with pytest.raises(InputError, match=rf"outside the vocabulary: ids must be in 0\.\.{n - 1}"):
            llama_tiny.run(bad)
    with pytest.raises(InputError, match=r"\(prompt, position\) \[\(1, 1\)\]"):
        llama_tiny.run([[1, 2], [3, n]], padding_side="right")
    with pytest.raises(InputError, match="outside the vocabulary"):
        llama_tiny.generate([[1, n]], 2)
    assert llama_tiny.run([[0, n - 1]]).logits.shape[1] == 2  # the edges are fine


def test_position_ids_out_of_range(llama_tiny: HookedModel) -> None:
    with pytest.raises(InputError, match="position_ids must be integers in 0..63"):
        llama_tiny.run([[1, 2]], position_ids=torch.tensor([[0, 64]]))
    with pytest.raises(InputError, match="position_ids must be integers"):
        llama_tiny.run([[1, 2]], position_ids=torch.tensor([[-1, 0]]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_steer_vector(llama_tiny: HookedModel, bad: float) -> None:
    v = torch.ones(llama_tiny.d_model)
    v[3] = bad
    with pytest.raises(InputError, match="1 NaN or infinite entries"):
        Steer("resid_post.0", v)
    with pytest.raises(InputError, match="scale must be a finite number"):
        Steer("resid_post.0", torch.ones(llama_tiny.d_model), scale=bad)


def test_corrupted_safetensors_names_the_file(tmp_path: Path) -> None:
    save_artifact(tmp_path / "a", {"x": 1}, {"t": torch.ones(100)})
    f = tmp_path / "a" / "tensors.safetensors"
    data = f.read_bytes()
    for damaged in (data[: len(data) // 2], b"\x00" * 3, b"garbage" * 20):
        f.write_bytes(damaged)
        with pytest.raises(ArtifactError, match=r"tensors\.safetensors is not a readable safetensors file"):
            load_artifact(tmp_path / "a")


def test_bad_json_names_the_file(tmp_path: Path) -> None:
    save_artifact(tmp_path / "a", {"x": 1}, {})
    cfg = tmp_path / "a" / "config.json"
    cfg.write_text('{"x": ')
    with pytest.raises(ArtifactError, match=r"config\.json is not readable JSON"):
        load_artifact(tmp_path / "a")
    cfg.write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="holds a JSON list"):
        load_artifact(tmp_path / "a")


def test_damaged_intervention_lists(llama_tiny: HookedModel, tmp_path: Path) -> None:
    save_interventions([Steer("resid_post.0", torch.ones(llama_tiny.d_model))], tmp_path / "iv")
    cfg = tmp_path / "iv" / "interventions.json"
    data = json.loads(cfg.read_text())
    from safetensors.torch import save_file
    save_file({"0.vector": torch.tensor([1.0, float("nan")])}, str(tmp_path / "iv" / "tensors.safetensors"))
    with pytest.raises(ArtifactError, match=r"interventions\.json \(item 0\): Steer vector has 1 NaN"):
        load_interventions(tmp_path / "iv")
    save_file({}, str(tmp_path / "iv" / "tensors.safetensors"))
    with pytest.raises(ArtifactError, match=r"\(item 0\) is damaged: KeyError"):
        load_interventions(tmp_path / "iv")
    cfg.write_text(json.dumps({"interventions": [{"type": "Steer"}]}))
    with pytest.raises(ArtifactError, match="must be an object with 'type' and 'config'"):
        load_interventions(tmp_path / "iv")
    cfg.write_text(json.dumps({"other": data}))
    with pytest.raises(ArtifactError, match="has no list 'interventions'"):
        load_interventions(tmp_path / "iv")
