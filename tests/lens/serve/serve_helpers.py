"""Helpers of the server tests: a real uvicorn server on a free 127.0.0.1 port, in a thread of the test process."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

pytest.importorskip("fastapi", reason="pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="pip install -e '.[serve]'")

from lmscope.interventions import HookedModel, Steer, save_interventions  # noqa: E402
from lmscope.lens.lenses import TunedLens  # noqa: E402
from lmscope.lens.serve.runner import ServerThread  # noqa: E402
from lmscope.lens.serve.state import ServerState  # noqa: E402


def tiny_tuned(model: HookedModel) -> TunedLens:
    lens = TunedLens(model)
    with torch.no_grad():
        lens.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    return lens


def steer_vector(model: HookedModel) -> torch.Tensor:
    return torch.randn(model.d_model, generator=torch.Generator().manual_seed(5))


@pytest.fixture
def served(llama_tiny: HookedModel, tmp_path: Path) -> Iterator[tuple[ServerThread, ServerState]]:
    """Tiny llama with logit + tuned lenses, a named steering folder and a --root with another one."""
    model = llama_tiny
    save_interventions([Steer("resid_post.0", steer_vector(model), 2.0)], tmp_path / "named")
    root = tmp_path / "root"
    save_interventions([Steer("resid_pre.1", steer_vector(model), -1.0)], root / "vectors" / "neg")
    from lmscope.lens.serve.state import read_interventions

    state = ServerState(model, {"tuned": tiny_tuned(model)}, steering={"named": read_interventions(tmp_path / "named")},
                        root=root)
    with ServerThread(state) as server:
        yield server, state


def post(server: Any, body: Any, path: str = "/api/v1/decode", **kw: Any) -> Any:
    import requests

    return requests.post(server.url + path, json=body, timeout=60, **kw)


def in_threads(n: int, client: Any) -> None:
    """Run ``client(i)`` in ``n`` threads at once and wait for all of them."""
    import threading

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
