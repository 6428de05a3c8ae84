"""The JSON API against a real server (uvicorn on a free localhost port): answers equal direct decodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from serve_helpers import in_threads, post, steer_vector

from lmscope.interventions import HookedModel, Steer
from lmscope.lens.serve.runner import ServerThread
from lmscope.lens.serve.schema import LIMITS, SCHEMA_VERSION
from lmscope.lens.serve.state import ServerState

PROMPTS = [[5, 17, 3, 44, 9], [8, 2, 61]]


def direct(state: ServerState, lens: str, prompts: Any = PROMPTS, steer: list[Any] | None = None, **kw: Any) -> list:
    with state.model.apply(steer or []):
        return [t.to_dict() for t in state.lenses[lens].decode(prompts, **kw)]


def test_info_and_schema(served: Any) -> None:
    server, state = served
    info = requests.get(server.url + "/api/v1/info", timeout=10).json()
    assert info["schema_version"] == SCHEMA_VERSION
    assert info["model"]["n_layers"] == 3 and set(info["lenses"]) == {"logit", "tuned"}
    assert info["steering"] == ["named"] and info["limits"]["max_batch"] == LIMITS.max_batch
    schema = requests.get(server.url + "/api/v1/schema", timeout=10).json()
    assert schema["schema_version"] == SCHEMA_VERSION
    assert set(schema["bodies"]["DecodeRequest"]["properties"]) >= {"prompts", "lens", "positions", "steer"}


@pytest.mark.parametrize("lens", ["logit", "tuned"])
def test_decode_equals_direct(served: Any, lens: str) -> None:
    server, state = served
    kw = dict(top_k=3, targets=[7, 11], positions=[0, -1], layers=[0, 2])
    r = post(server, {"prompts": PROMPTS, "lens": lens, "top_k": 3, "targets": [7, 11], "positions": [0, -1],
                      "layers": "0,2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["schema_version"] == SCHEMA_VERSION and body["lens"] == state.lenses[lens].describe()
    assert body["trajectories"] == direct(state, lens, **kw)


def test_steering_by_name_and_by_folder_equals_direct(served: Any, tmp_path: Path) -> None:
    server, state = served
    v = steer_vector(state.model)
    r = post(server, {"prompts": PROMPTS, "steer": {"name": "named", "scale": 1.5}})
    assert r.json()["trajectories"] == direct(state, "logit", steer=[Steer("resid_post.0", v, 3.0)])
    assert r.json()["trajectories"] != direct(state, "logit")
    r = post(server, {"prompts": PROMPTS, "steer": {"name": "vectors/neg", "scale": 2.0}})
    assert r.json()["trajectories"] == direct(state, "logit", steer=[Steer("resid_pre.1", v, -2.0)])
    r = post(server, {"prompts": PROMPTS, "steer": {"name": "named", "scale": 0.0}})
    assert r.json()["trajectories"] == direct(state, "logit")


@pytest.mark.parametrize("name", ["../named", "/etc", "vectors/../../named", "."])
def test_steering_folders_outside_root_are_refused(served: Any, name: str) -> None:
    server, _ = served
    r = post(server, {"prompts": PROMPTS, "steer": {"name": name}})
    assert r.status_code in (400, 404), r.text
    assert "outside the server's root" in r.json()["detail"] or "No steering" in r.json()["detail"]


@pytest.mark.parametrize("body, status, message", [
    ({"prompts": [[1, 500]]}, 400, "outside the vocabulary"),
    ({"prompts": ["some text"]}, 400, "no tokenizer"),
    ({"prompts": PROMPTS, "lens": "nope"}, 404, "No lens 'nope'"),
    ({"prompts": PROMPTS, "steer": {"name": "nope"}}, 404, "No steering 'nope'"),
    ({"prompts": PROMPTS, "layers": "7"}, 400, "layer"),
    ({"prompts": PROMPTS, "positions": [9]}, 400, "outside prompt"),
    ({"prompts": [[1]] * (LIMITS.max_batch + 1)}, 422, "at most"),
    ({"prompts": ["x" * (LIMITS.max_prompt_chars + 1)]}, 422, "the limit is"),
    ({"prompts": [list(range(1, 90)) * 3]}, 422, "the limit is"),
    ({"prompts": PROMPTS, "top_k": 0}, 422, "greater than or equal"),
    ({"prompts": PROMPTS, "code": "import os"}, 422, "Extra inputs"),
    ({"prompts": []}, 422, "at least 1"),
])
def test_bad_requests_get_clear_4xx(served: Any, body: Any, status: int, message: str) -> None:
    server, _ = served
    r = post(server, body)
    assert r.status_code == status, r.text
    assert message in json.dumps(r.json()["detail"])
    assert len(r.content) < 4000  # the offending input is not echoed back


def test_non_finite_scale_is_refused(served: Any) -> None:
    server, _ = served
    r = requests.post(server.url + "/api/v1/decode", data='{"prompts": [[1, 2]], "steer": {"name": "named", '
                      '"scale": NaN}}', headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 422 and "finite" in r.text


def test_body_size_and_host_header(served: Any) -> None:
    server, _ = served
    r = requests.post(server.url + "/api/v1/decode", data=b"[" + b"1," * LIMITS.max_body_bytes + b"1]",
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no content-length: the limit is enforced while reading
        for _ in range(LIMITS.max_body_bytes // 1000 + 2):
            yield b" " * 1000
    r = requests.post(server.url + "/api/v1/decode", data=chunks(), headers={"Content-Type": "application/json"},
                      timeout=10)
    assert r.status_code == 413
    r = requests.get(server.url + "/api/v1/info", headers={"Host": "attacker.example:80"}, timeout=10)
    assert r.status_code == 421


def test_token_protects_the_api(llama_tiny: HookedModel) -> None:
    with ServerThread(ServerState(llama_tiny, {}), token="s3cret") as server:
        assert requests.get(server.url + "/api/v1/info", timeout=10).status_code == 401
        bad = {"Authorization": "Bearer wrong"}
        assert requests.get(server.url + "/api/v1/info", headers=bad, timeout=10).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert requests.get(server.url + "/api/v1/info", headers=good, timeout=10).status_code == 200
        assert requests.get(server.url + "/", timeout=10).status_code == 200  # the page holds no data


def test_page_and_static_files_are_offline(served: Any) -> None:
    """The page and every script and style it loads come from this server, and none reaches elsewhere."""
    import re

    server, _ = served
    page = requests.get(server.url + "/", timeout=10).text
    assert "/static/app.js" in page and "http://" not in page and "https://" not in page
    files = re.findall(r'(?:src|href)="(/static/[\w.]+)"', page)
    assert len(files) >= 8
    texts = {f: requests.get(server.url + f, timeout=10) for f in files}
    assert all(r.status_code == 200 for r in texts.values())
    for name, r in texts.items():
        body = r.text.lower()
        assert "cdn" not in body and "https://" not in body and "import(" not in body, name
        assert "http://" not in body.replace("http://www.w3.org/2000/svg", ""), name  # the SVG namespace only
    assert "fetch(" in texts["/static/core.js"].text


def test_concurrent_clients_equal_direct(served: Any) -> None:
    server, state = served
    bodies = [{"prompts": PROMPTS, "lens": "tuned", "top_k": 2},
              {"prompts": PROMPTS, "steer": {"name": "named", "scale": -1.0}},
              {"prompts": [PROMPTS[1]], "targets": [4]}]
    v = steer_vector(state.model)
    expected = [direct(state, "tuned", top_k=2), direct(state, "logit", steer=[Steer("resid_post.0", v, -2.0)]),
                direct(state, "logit", [PROMPTS[1]], targets=[4])]
    failures: list[str] = []

    def client(i: int) -> None:
        for _ in range(4):
            r = post(server, bodies[i % 3])
            if r.status_code != 200 or r.json()["trajectories"] != expected[i % 3]:
                failures.append(f"client {i}: {r.status_code}")
    in_threads(6, client)
    assert not failures
    assert state.model.hf_model.config._attn_implementation == "sdpa"
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in state.model.hf_model.modules()) == 0


def test_serve_refuses_public_bind_without_token(capsys: pytest.CaptureFixture[str]) -> None:
    from lmscope.interventions import cli

    assert cli.main(["serve", "--host", "0.0.0.0", "--model", "/nonexistent"]) == 2
    assert "give --token" in capsys.readouterr().err


def test_direct_vectors_are_steered_distinctly(served: Any) -> None:
    """Sanity of the fixture: the two steering folders change the decode differently."""
    server, state = served
    a = post(server, {"prompts": PROMPTS, "steer": {"name": "named"}}).json()["trajectories"]
    b = post(server, {"prompts": PROMPTS, "steer": {"name": "vectors/neg"}}).json()["trajectories"]
    assert a != b and torch.is_tensor(steer_vector(state.model))
