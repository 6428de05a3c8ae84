"""Model names: a local path or a Hugging Face hub id, and failing fast (one sentence) when the hub is unreachable.

``transformers`` retries an unreachable hub for ~30 s and then prints a two-line message. Before loading a hub
id, :func:`resolve_model_name` checks (well under a second) whether the hub can be reached; without a network it
loads the id from the local Hugging Face cache if it is there, and otherwise raises :class:`OfflineError` saying
how to load local files. Nothing here imports torch or transformers (the CLI calls it before those load).
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path

from .errors import OfflineError

HUB_HOST = "huggingface.co"
#: ``name`` or ``org/name``: letters, digits, ``-``, ``_``, ``.`` (the hub's own rule), no leading ``.``/``-``
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_TRUE = {"1", "true", "yes", "on"}


def looks_like_hub_id(name: str) -> bool:
    """Whether ``name`` can be a hub id (``gpt2``, ``EleutherAI/pythia-160m``); a path like ``./x``, ``a/b/c``,
    ``/abs`` or ``m.gguf`` cannot."""
    return bool(_HUB_ID.fullmatch(name)) and not name.endswith(".gguf") and ".." not in name


def offline_requested() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: never touch the network."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 0.8, host: str | None = None) -> bool:
    """Whether a TCP connection to the hub (``HF_ENDPOINT``'s host, or huggingface.co) opens within ``timeout`` s.

    Name resolution has no timeout of its own, so the whole check runs in a daemon thread that is abandoned
    after ``timeout``: the answer is never slower than that.
    """
    if host is None:
        endpoint = os.environ.get("HF_ENDPOINT", "")
        host = re.sub(r"^\w+://", "", endpoint).split("/")[0].split(":")[0] if endpoint else HUB_HOST
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def cached_snapshot(hub_id: str) -> str | None:
    """The local folder of ``hub_id`` in the Hugging Face cache when its config is there, else None (no network)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        return None
    try:
        folder = snapshot_download(hub_id, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return folder if (Path(folder) / "config.json").is_file() else None


def offline_message(name: str) -> str:
    """The one sentence said when ``name`` is a hub id, the hub cannot be reached and the id is not cached."""
    why = "HF_HUB_OFFLINE is set" if offline_requested() else f"there is no network ({HUB_HOST} cannot be reached)"
    return (f"Cannot load {name!r} from the Hugging Face hub: {why} and it is not in the local HF cache. "
            "Load local files instead: a model folder or .gguf file path (--model path/to/folder), "
            "or a Hugging Face cache that holds it with HF_HUB_OFFLINE=1 (HF_HOME points at the cache).")


def resolve_model_name(name: str, timeout: float = 0.8) -> str:
    """What to load for ``name``: an existing path as is; a hub id as is when the hub can be reached, else its
    cached snapshot folder; :class:`OfflineError` (raised in under ``timeout`` s plus a cache look-up) otherwise.

    A name that is neither an existing path nor a possible hub id is returned unchanged (the loader reports the
    missing path). Embedded model names (``default``...) are the caller's to handle first.
    """
    if os.path.exists(name) or not looks_like_hub_id(name):
        return name
    if not offline_requested() and hub_reachable(timeout):
        return name
    folder = cached_snapshot(name)
    if folder is None:
        raise OfflineError(offline_message(name))
    return folder
