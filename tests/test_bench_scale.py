"""The scale benchmark runs end to end at a tiny shape, so it cannot rot (the 1B / 7B runs are done by hand)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

from lmscope.interventions.tolerance import is_close

BENCH = Path(__file__).parents[1] / "benchmarks" / "bench_scale.py"


def _bench_scale() -> ModuleType:
    """benchmarks/bench_scale.py loaded from its file path (registered first: its dataclasses look it up)."""
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_scale_tiny(tmp_path: Path, one_thread: None, capsys) -> None:  # type: ignore[no-untyped-def]
    bench_scale = _bench_scale()
    report = bench_scale.main(["--tiny", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    for line in ("hook overhead", "patching", "tuned lens", "collection", "peak memory"):
        assert line in out
    assert report["dtype"] == "torch.bfloat16" and (tmp_path / "r.json").is_file()
    cfg = bench_scale.CONFIGS["tiny"]
    n_layers, d = cfg["num_hidden_layers"], cfg["hidden_size"]
    batch, seq = report["shape"]
    # the tied LLaMA's parameter count, by hand: embeddings + per layer (q, k, v, o, gate/up/down, two norms) + norm
    kv = d // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * cfg["intermediate_size"] + 2 * d
    assert report["params"] == cfg["vocab_size"] * d + n_layers * per_layer + d
    p = report["patching"]
    assert p["cells"] == 4 * 2 and p["exact_cells_per_s"] > 0 and p["loop_cells_per_s"] > 0
    assert is_close(p["max_abs_exact_minus_loop"], 0.0, torch.bfloat16, scale=1.0)
    assert report["lens"]["init_tokens_per_s"] > 0 and report["lens"]["kl_tokens_per_s"] > 0
    cached_bytes = n_layers * batch * seq * d * 2  # every resid_post of every token, bfloat16
    assert report["collection"]["gb"] * 1e9 >= cached_bytes
    assert report["memory"]["cached_tensors_mb"] * 2**20 == cached_bytes
    assert report["overhead"]["ratio"] > 0
