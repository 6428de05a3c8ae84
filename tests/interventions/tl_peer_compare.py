"""Run inside the TransformerLens venv (``make peer-venv``): compare TL's TransformerBridge hooks to lmscope's values.

Usage: ``python tl_peer_compare.py FOLDER``. ``FOLDER`` holds ``model/`` (an HF checkpoint written with
``save_pretrained``, with or without a tokenizer) and ``ours.safetensors``: lmscope's site values keyed by their
TransformerLens names, plus ``__input_ids__``. This script never imports lmscope (the two venvs pin different
packages); it boots ``TransformerBridge`` on the HF model, runs ``run_with_cache`` on the same ids, writes the
bridge's values of those hooks (and the norms' ``hook_out``) to ``theirs.safetensors`` for the test to compare, and
prints one JSON line: lmscope names the bridge lacks, and the bridge hooks lmscope has no name for.

Optional ``habits.json`` in ``FOLDER`` asks for TransformerLens's answers to its habits: ``act_names`` (argument
lists for ``utils.get_act_name``) and ``filter_suffixes`` (the hook names ``run_with_cache`` keeps under
``names_filter=lambda n: n.endswith(tuple(filter_suffixes))``); the JSON line then carries them too.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _tokenizer(folder: Path, vocab: int):  # type: ignore[no-untyped-def]
    """The checkpoint's tokenizer, or a word-level stand-in for tiny random models (ids are passed directly)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception:  # noqa: BLE001 - tiny checkpoints have no tokenizer files
        from tokenizers import Tokenizer, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0", bos_token="t0",
                                eos_token="t0").save_pretrained(folder)  # the bridge reloads it by path
        return AutoTokenizer.from_pretrained(folder)


def main(folder: Path) -> dict:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    ours = load_file(str(folder / "ours.safetensors"))
    ids = ours.pop("__input_ids__")
    hf = AutoModelForCausalLM.from_pretrained(folder / "model", attn_implementation="eager", dtype=torch.float32)
    hf.eval()
    bridge = TransformerBridge.boot_transformers(str(folder / "model"), hf_model=hf,
                                                 tokenizer=_tokenizer(folder / "model", hf.config.vocab_size))
    if any(name.endswith("attn.hook_result") for name in ours) and hasattr(bridge, "set_use_attn_result"):
        bridge.set_use_attn_result(True)  # per-head outputs (our head_out) are computed only when asked for
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids)
    wanted = [*ours, *(n.replace("hook_normalized", "hook_out") for n in ours if n.endswith("hook_normalized"))]
    theirs = {name: cache[name].detach().float().contiguous().clone() for name in wanted if name in cache}
    save_file(theirs, str(folder / "theirs.safetensors"))
    no_site = sorted({re.sub(r"^blocks\.\d+\.", "blocks.{L}.", k) for k in cache.keys() if k not in ours})
    report = {"missing_in_tl": [n for n in ours if n not in cache], "tl_hooks_without_lmscope_site": no_site}
    if (folder / "habits.json").exists():
        report.update(_habits(bridge, ids, json.loads((folder / "habits.json").read_text())))
    return report


def _habits(bridge, ids: torch.Tensor, asked: dict) -> dict:  # type: ignore[no-untyped-def]
    """TransformerLens's own ``get_act_name`` results and ``names_filter`` keys for what ``asked`` lists."""
    from transformer_lens.utilities import get_act_name

    suffixes = tuple(asked.get("filter_suffixes", ()))
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n.endswith(suffixes))
    return {"act_names": [get_act_name(*args) for args in asked.get("act_names", [])],
            "filtered_keys": sorted(cache.keys())}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
