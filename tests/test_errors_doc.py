"""Every example message in ``docs/errors.md`` is what the code says: each is triggered here (tiny random models,
no network) and compared line by line with the doc's ``text`` blocks, section by section.

Paths are rendered inside a temporary folder and shown in the doc as ``/data/...``; the installed transformers
version in the LibraryVersionError example is shown as 5.26.0 (a release above the tested range)."""

from __future__ import annotations

import contextlib
import errno
import io
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from tiny_models import TINY_CONFIGS, build_tiny

from lmscope.interventions import Ablate, Cache, Edit, HookedModel, Patch, Steer, cli, hf_compat, hub

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"
SHOWN = "/data"  # what the doc shows for the temporary folder


def documented() -> dict[str, list[str]]:
    """The lines of every ``text`` block of docs/errors.md, by section (``## Name``)."""
    out: dict[str, list[str]] = {}
    section = ""
    for block_or_head in re.finditer(r"^## (\w+)$|^```text\n(.*?)^```$", DOC.read_text(encoding="utf-8"), re.M | re.S):
        if block_or_head.group(1):
            section = block_or_head.group(1)
        else:
            out.setdefault(section, []).extend(block_or_head.group(2).strip("\n").splitlines())
    return out


def message(fn: Callable[[], Any]) -> str:
    """The message of the lmscope error ``fn`` raises (KeyError's quoting undone)."""
    from lmscope.interventions.errors import LmscopeError

    try:
        fn()
    except LmscopeError as err:
        return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    raise AssertionError(f"{fn} raised nothing")


def cli_message(argv: list[str]) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(argv) == 2
    return err.getvalue().strip().removeprefix("lmscope: error: ")


@pytest.fixture(scope="module")
def models() -> dict[str, HookedModel]:
    return {name: HookedModel(build_tiny(name).cpu()) for name in ("llama", "gpt_neox")}


def site_errors(m: dict[str, HookedModel], tmp: Path) -> list[str]:
    llama, neox = m["llama"], m["gpt_neox"]
    return [message(lambda: llama.run([[1, 2, 3]], [Cache("resid_psot.1")])),
            message(lambda: llama.run([[1, 2, 3]], [Cache("resid_post.40")])),
            message(lambda: neox.run([[1, 2, 3]], [Cache("resid_mid.0")]))]


def input_errors(m: dict[str, HookedModel], tmp: Path) -> list[str]:
    llama = m["llama"]
    return [message(lambda: llama.run([[1, 2, 3]], [Cache("resid_post.0", positions=5)])),
            message(lambda: llama.run([[1, 2, 3]], [Steer("resid_pre.0", torch.zeros(7))])),
            message(lambda: llama.run([[1, 2, 3]], [Ablate("head_z.0", heads=[99])])),
            message(lambda: llama.run([[1, 2, 3]], ["resid_post.0"])),
            message(lambda: llama.run("Hello")),
            message(lambda: llama.run([[1, 2, 3]], [Patch("resid_pre.0", {"resid_pre.1": torch.zeros(1, 3, 32)})]))]


def cli_errors(m: dict[str, HookedModel], tmp: Path) -> list[str]:
    from lmscope.lens.lenses import TunedLens

    TunedLens(m["llama"]).save(tmp / "my-lens")
    return [cli_message(["decode", "Hello", "--model", "my-modle"]),
            cli_message(["decode", "Hello", "--plot", "out.jpg"]),
            cli_message(["patch", "--clean", "a", "--corrupt", "b", "--target", "x", "--out", str(tmp / "my-lens")])]


def unsupported(m: dict[str, HookedModel], tmp: Path) -> list[str]:
    from transformers import BertConfig, BertLMHeadModel

    bert = BertLMHeadModel(BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=48, is_decoder=True))
    return [message(lambda: HookedModel(bert))]


class FalconAttention(torch.nn.Module):
    """A FalconAttention whose forward takes ``mask`` where transformers' takes ``attention_mask``."""

    _split_heads = query_key_value = inv_norm_factor = num_heads = num_kv_heads = head_dim = dense = None
    new_decoder_architecture = None

    def forward(self, hidden_states: Any, alibi: Any, mask: Any) -> None:
        return None


def library_version(m: dict[str, HookedModel], tmp: Path) -> list[str]:
    from lmscope.interventions.ported_attention import falcon_port

    return [message(lambda: falcon_port(FalconAttention()))]


def mismatch(m: dict[str, HookedModel], tmp: Path) -> list[str]:
    from lmscope.lens.lenses import TunedLens

    TunedLens(m["llama"]).save(tmp / "lens")
    return [message(lambda: TunedLens.load(tmp / "lens", m["gpt_neox"]))]


def corpus(m: dict[str, HookedModel], tmp: Path) -> list[str]:
    from lmscope.lens.training.corpus import Corpus

    return [message(lambda: Corpus.from_sources(str(tmp / "texts" / "*.txt")))]


def corpus_exhausted(m: dict[str, HookedModel], tmp: Path) -> list[str]:
    from lmscope.lens.training.fit import train_tuned_lens

    (tmp / "texts").mkdir()
    (tmp / "texts" / "t.txt").write_text("the quick brown fox " * 9)
    return [message(lambda: train_tuned_lens(m["llama"], str(tmp / "texts" / "t.txt"), steps=0, init_tokens=256,
                                             seq_len=64, tokens_per_step=64, progress=False))]


def offline(m: dict[str, HookedModel], tmp: Path) -> list[str]:
    return [message(lambda: hub.resolve_model_name("gpt2"))]


def artifact(m: dict[str, HookedModel], tmp: Path) -> list[str]:
    from lmscope.lens.lenses import TunedLens

    TunedLens(m["llama"]).save(tmp / "my-lens")
    file = tmp / "my-lens" / "lens.safetensors"
    file.write_bytes(file.read_bytes()[:20])  # truncated
    return [message(lambda: TunedLens.load(tmp / "my-lens", m["llama"]))]


def artifact_write(m: dict[str, HookedModel], tmp: Path) -> list[str]:
    from lmscope.interventions.artifacts import write_error

    (tmp / "results").mkdir()
    return [str(write_error(tmp / "my-lens" / "lens.safetensors", OSError(errno.ENOSPC, "No space left on device"))),
            str(write_error(tmp / "results" / "my-lens", PermissionError(errno.EACCES, "Permission denied")))]


def cache_folder(m: dict[str, HookedModel], tmp: Path) -> list[str]:
    from lmscope.interventions.cache_folder import cache_folder_error

    cache = tmp / "shared" / "lmscope-cache"
    (cache / "models").mkdir(parents=True)
    return [str(cache_folder_error(cache / "models" / "SmolLM2-135M-Instruct"))]


def placement(m: dict[str, HookedModel], tmp: Path) -> list[str]:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(TINY_CONFIGS["llama"]())
    return [message(lambda: HookedModel(empty))]


def remote(m: dict[str, HookedModel], tmp: Path) -> list[str]:
    pytest.importorskip("nnsight", reason="the nnsight extra (pip install 'lmscope[nnsight]')")
    from lmscope.interventions.backends.nnsight import check_remote, hub_name

    return [message(lambda: check_remote([Edit("mlp_out.0", lambda v: v)])),
            message(lambda: check_remote([Cache("resid_post.0")])),
            message(lambda: hub_name(m["llama"]))]


TRIGGERS: dict[str, Callable[[dict[str, HookedModel], Path], list[str]]] = {
    "SiteError": site_errors, "InputError": input_errors, "CliError": cli_errors,
    "UnsupportedArchitectureError": unsupported, "LibraryVersionError": library_version,
    "ModelMismatchError": mismatch, "CorpusError": corpus, "CorpusExhaustedError": corpus_exhausted,
    "OfflineError": offline, "ArtifactError": artifact, "ArtifactWriteError": artifact_write,
    "CacheFolderError": cache_folder, "PlacementError": placement, "RemoteError": remote,
}


def test_every_documented_example_has_a_trigger() -> None:
    assert sorted(documented()) == sorted(TRIGGERS)


@pytest.mark.parametrize("section", sorted(TRIGGERS))
def test_documented_messages_are_the_real_ones(section: str, models: dict[str, HookedModel], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=0.8: False)  # no network, whatever the machine has
    monkeypatch.setattr(hub, "cached_snapshot", lambda hub_id: None)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "NDIF_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "shared" / "lmscope-cache"))
    monkeypatch.setattr(hf_compat, "installed", lambda name: "5.26.0")
    with contextlib.suppress(ImportError):
        from nnsight import CONFIG

        monkeypatch.setattr(CONFIG.API, "APIKEY", None, raising=False)
    monkeypatch.chdir(tmp_path)
    rendered = [line.replace(str(tmp_path), SHOWN) for line in TRIGGERS[section](models, tmp_path)]
    assert rendered == documented()[section]
