"""A fresh clone on a new day (issue 17): lint that does not depend on the clone's folder name, tested version
ranges that agree everywhere, transformers signatures checked when a model is wrapped, a set-up that installs no
system package unless asked, and artifacts that honour the user's umask."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch import nn

from lmscope.interventions import LibraryVersionError
from lmscope.interventions.artifacts import atomic_save_figure, atomic_write_text, save_artifact
from lmscope.interventions.hf_compat import TESTED, range_requirement, require_params
from lmscope.interventions.ported_attention import (
    FALCON_INLINE,
    FALCON_INTERFACE,
    falcon_attention,
    falcon_port,
)

ROOT = Path(__file__).resolve().parent.parent
LINTED = ["__init__.py", "interventions", "lens", "probes", "tests", "benchmarks"]

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    tomllib = None  # type: ignore[assignment]


def _tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the lint-in-any-folder test copies the tracked files")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [f for f in out.stdout.decode().split("\0") if f and (ROOT / f).is_file()]


def test_lint_is_the_same_in_a_clone_named_lmscope_and_in_any_other(tmp_path: Path) -> None:
    """ruff guesses first-party modules from the folder holding the root __init__.py unless told: a clone named
    ``lmscope`` used to fail with I001 on every import block while any other name passed."""
    files = _tracked_files()
    results = {}
    for name in ("lmscope", "work"):
        clone = tmp_path / name
        for f in files:
            (clone / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, clone / f)
        run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *LINTED], cwd=clone,
                             capture_output=True, text=True)
        results[name] = (run.returncode, run.stdout)
    assert results["lmscope"] == results["work"], results
    assert results["lmscope"][0] == 0, results["lmscope"][1][-2000:]


def _pyproject() -> dict[str, Any]:
    if tomllib is None:  # pragma: no cover
        pytest.skip("tomllib needs Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements() -> dict[str, str]:
    project = _pyproject()["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    out = {}
    for req in reqs:
        name = re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0]
        out.setdefault(name, req[len(name):])
    return out


def test_range_requirements_agree_between_pyproject_and_the_runtime_checks() -> None:
    reqs = _requirements()
    for name, spec in TESTED.items():
        assert reqs[name] == spec, f"pyproject says {name}{reqs[name]}, hf_compat.TESTED says {name}{spec}"
        lower, upper = spec.split(",")
        assert lower.startswith(">=") and upper.startswith("<"), f"{name}: a tested lower and an upper bound"


def test_constraints_pin_versions_inside_the_range_requirements() -> None:
    from packaging.specifiers import SpecifierSet

    pins = {}
    for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, ver = line.partition("==")
            pins[name.lower().replace("_", "-")] = ver
    assert "torch" not in pins, "torch comes from the Makefile's TORCH (CPU or CUDA build), not the lock"
    for name, spec in TESTED.items():
        if name == "torch":
            continue
        assert name in pins, f"{name} is not pinned in .ci/constraints.txt"
        assert pins[name] in SpecifierSet(spec), f"{name}=={pins[name]} is outside the tested {spec}"


def test_the_installed_libraries_are_inside_the_range_requirements() -> None:
    """What this suite runs on is what pyproject claims was tested (make test-latest runs outside the ranges)."""
    if os.environ.get("LMSCOPE_LATEST"):
        pytest.skip("make test-latest runs the newest releases on purpose")
    from importlib.metadata import version

    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    for name, spec in TESTED.items():
        installed = Version(version(name))
        assert Version(installed.base_version) in SpecifierSet(spec), f"{name} {installed} outside {spec}"


# -- transformers signatures, checked when a model is wrapped ---------------------------------------------------
def _attention_class(params: tuple[str, ...], with_attrs: bool = True) -> nn.Module:
    """An attention module whose forward has exactly ``params`` (what a transformers release might ship)."""
    args = ", ".join(params[1:])
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {args}, **kwargs):\n    return None", namespace)  # noqa: S102 - a fixed signature
    cls = type("FalconAttention", (nn.Module,), {"forward": namespace["forward"]})
    module = cls()
    if with_attrs:
        for attr in ("_split_heads", "query_key_value", "inv_norm_factor", "num_heads", "num_kv_heads", "head_dim",
                     "dense", "new_decoder_architecture"):
            setattr(module, attr, None)
    return module


def test_falcon_port_follows_the_installed_signature() -> None:
    assert falcon_port(_attention_class(FALCON_INTERFACE)) is None  # transformers >= 5.25: attention interface
    assert falcon_port(_attention_class(FALCON_INLINE)) is falcon_attention  # 5.0 - 5.24: computed inline


@pytest.mark.parametrize("params", [("self", "hidden_states", "alibi", "mask"), ("self", "x", "attention_mask")])
def test_an_unknown_falcon_signature_is_refused_naming_the_versions(params: tuple[str, ...]) -> None:
    with pytest.raises(LibraryVersionError) as err:
        falcon_port(_attention_class(params))
    msg = str(err.value)
    assert "FalconAttention" in msg and "installed: transformers " in msg and range_requirement("transformers") in msg


def test_the_inline_port_needs_the_attributes_it_uses() -> None:
    with pytest.raises(LibraryVersionError, match="without _split_heads"):
        falcon_port(_attention_class(FALCON_INLINE, with_attrs=False))


def test_require_params_names_what_is_missing() -> None:
    def cache_init(self: Any, config: Any = None) -> None: ...

    with pytest.raises(LibraryVersionError, match=r"missing ddp_cache_data.*transformers>=5\.24"):
        require_params(cache_init, ("ddp_cache_data", "config"), "Partial forwards")


def test_the_wrapped_falcon_uses_the_port_its_transformers_needs() -> None:
    """On the installed transformers the resolved port matches the HF forward, and attn_pattern runs."""
    from tiny_models import build_tiny

    from lmscope.interventions import Cache, HookedModel

    model = HookedModel(build_tiny("falcon"))
    attn = model.module(f"{model.arch.layers}.0.{model.arch.attn}")
    assert model.attention_port is falcon_port(attn)
    ids = torch.tensor([[1, 5, 9, 2]])
    pattern = model.run(ids, [Cache("attn_pattern.0")]).cache["attn_pattern.0"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))


# -- the set-up: no system packages unless asked -------------------------------------------------------------------
def _make_dry_run(tmp_path: Path, *args: str) -> str:
    if shutil.which("make") is None:  # pragma: no cover
        pytest.skip("make is not installed")
    clone = tmp_path / "clone"
    clone.mkdir(parents=True)
    for f in ("Makefile", "pyproject.toml", ".ci/constraints.txt"):
        (clone / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, clone / f)
    # A clean environment: inside `make test BROWSER=1` (CI) the outer make exports its command-line variables through
    # MAKEFLAGS, which the inner make would otherwise inherit; the default is what a new user gets.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "BROWSER")}
    run = subprocess.run(["make", "-n", *args], cwd=clone, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_make_demo_and_test_never_call_apt_without_browser(tmp_path: Path) -> None:
    for target in ("demo", "test"):
        assert "apt-get" not in _make_dry_run(tmp_path / target, target)
    assert "apt-get install" in _make_dry_run(tmp_path / "browser", "test", "BROWSER=1")


def test_ci_asks_for_the_browser_test() -> None:
    assert "BROWSER=1" in (ROOT / ".ci" / "run").read_text()


def test_a_skipped_browser_test_says_how_to_include_it() -> None:
    text = (ROOT / "tests" / "lens" / "serve" / "test_browser.py").read_text()
    assert "make test BROWSER=1" in text


# -- artifacts honour the umask --------------------------------------------------------------------------------------
@pytest.fixture(params=[0o022, 0o027])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_artifacts_have_the_modes_of_ordinary_files(tmp_path: Path, umask: int) -> None:
    folder = save_artifact(tmp_path / "shared" / "steer", {"a": 1}, {"v": torch.ones(3)})
    assert _mode(folder) == 0o777 & ~umask
    for f in folder.iterdir():
        assert _mode(f) == 0o666 & ~umask, f
    text = tmp_path / "notes.json"
    atomic_write_text(text, "{}")
    assert _mode(text) == 0o666 & ~umask
    plt = pytest.importorskip("matplotlib.pyplot")
    fig = plt.figure()
    try:
        png = atomic_save_figure(fig, tmp_path / "lens.png")
    finally:
        plt.close(fig)
    assert _mode(png) == 0o666 & ~umask
