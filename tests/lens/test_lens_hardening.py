"""A damaged tuned-lens folder is refused with an ArtifactError naming the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmscope.interventions import HookedModel
from lmscope.interventions.errors import ArtifactError
from lmscope.lens.lenses import TENSORS_NAME, TunedLens


def test_damaged_lens_files(llama_tiny: HookedModel, tmp_path: Path) -> None:
    lens = TunedLens(llama_tiny)
    lens.save(tmp_path / "lens")
    tfile = tmp_path / "lens" / TENSORS_NAME
    good = tfile.read_bytes()
    tfile.write_bytes(good[:-40])  # truncated
    with pytest.raises(ArtifactError, match=rf"{TENSORS_NAME} is not a readable safetensors"):
        TunedLens.load(tmp_path / "lens", llama_tiny)
    cases = [
        ({"weight": torch.zeros(2, 3), "bias": lens.bias.detach()}, r"'weight' has shape \(2, 3\); expected"),
        ({"weight": lens.weight.detach().long(), "bias": lens.bias.detach()}, "dtype torch.int64; a floating"),
        ({"bias": lens.bias.detach()}, "has no tensor 'weight'"),
        ({"weight": lens.weight.detach() + float("nan"), "bias": lens.bias.detach()}, "NaN or infinite"),
    ]
    from safetensors.torch import save_file
    for tensors, message in cases:
        save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(tfile))
        with pytest.raises(ArtifactError, match=message):
            TunedLens.load(tmp_path / "lens", llama_tiny)
    tfile.write_bytes(good)
    cfg = tmp_path / "lens" / "config.json"
    data = json.loads(cfg.read_text())
    del data["readings"]
    cfg.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="readings missing"):
        TunedLens.load(tmp_path / "lens", llama_tiny)
