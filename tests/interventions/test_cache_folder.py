"""A cache folder that cannot be written (a shared read-only ``LMSCOPE_CACHE`` on a cluster): what it holds loads,
and anything that must be written there is one ``CacheFolderError`` line naming the folder and ``LMSCOPE_CACHE``
(``lmscope: error: ...``, exit status 2 on the command line), never a raw ``PermissionError``; before any slow
work where there is some. Each case runs twice: with the folder really chmod'ed read-only (skipped as root, whom
chmod does not stop) and with the refusal simulated (``os.access`` and the calls that create files say EACCES)."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import stat
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

from lmscope.interventions import HookedModel, cli, defaults
from lmscope.interventions.artifacts import atomic_dir, atomic_write_text, save_artifact
from lmscope.interventions.cache_folder import cache_dir, check_cache_writable, in_cache, writable
from lmscope.interventions.errors import ArtifactWriteError, CacheFolderError, LmscopeError
from lmscope.lens.training import fit
from lmscope.lens.training.corpus import Corpus

SMALL = {"init_tokens": 64, "seq_len": 32, "tokens_per_step": 32}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _inside(path: Any, root: Path) -> bool:
    here = os.path.abspath(os.fsdecode(path))
    return here == str(root) or here.startswith(f"{root}{os.sep}")


def _refuse(path: Any) -> None:
    raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))


def _simulate_read_only(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """What a read-only ``root`` does to a non-root user, for any user: ``os.access`` says no, and creating,
    opening for writing, renaming or removing anything inside it raises EACCES."""
    real_access, real_mkdir, real_open, real_replace, real_io_open = os.access, os.mkdir, os.open, os.replace, io.open

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        return False if mode & os.W_OK and _inside(path, root) else real_access(path, mode, *args, **kwargs)

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        return _refuse(path) if _inside(path, root) else real_mkdir(path, *args, **kwargs)

    def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        return _refuse(path) if flags & _WRITE_FLAGS and _inside(path, root) else real_open(path, flags, *args,
                                                                                               **kwargs)

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        return _refuse(src) if _inside(src, root) or _inside(dst, root) else real_replace(src, dst, *args, **kwargs)

    def opener(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        writing = isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+")
        return _refuse(file) if writing and _inside(file, root) else real_io_open(file, mode, *args, **kwargs)

    for target, name, fake in ((os, "access", access), (os, "mkdir", mkdir), (os, "open", os_open),
                               (os, "replace", replace), (io, "open", opener), (builtins, "open", opener)):
        monkeypatch.setattr(target, name, fake)


def _chmod_tree(root: Path, writable_: bool) -> None:
    for p in sorted([root, *root.rglob("*")], reverse=not writable_):
        dir_mode, file_mode = (0o755, 0o644) if writable_ else (0o555, 0o444)
        os.chmod(p, dir_mode if p.is_dir() else file_mode)


@pytest.fixture(params=["chmod", "simulated"])
def shared_cache(request: pytest.FixtureRequest, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Callable[[], None]]]:
    """``(cache folder, freeze)``: LMSCOPE_CACHE points at an empty writable folder; ``freeze()`` makes it
    read-only (for real, or simulated), after the test has put in it what a shared cache would hold."""
    root = (tmp_path / "shared-cache").resolve()
    root.mkdir()
    monkeypatch.setenv("LMSCOPE_CACHE", str(root))

    def freeze() -> None:
        if request.param == "simulated":
            _simulate_read_only(monkeypatch, root)
            return
        _chmod_tree(root, writable_=False)
        if os.access(root, os.W_OK):  # root (as in CI): chmod does not stop it; the simulated case covers it
            pytest.skip("chmod does not make a folder read-only for this user (root)")
    yield root, freeze
    if request.param == "chmod":
        _chmod_tree(root, writable_=True)


def _one_line(err: BaseException, root: Path) -> str:
    text = str(err)
    assert "\n" not in text and f"the lmscope cache folder {root}" in text
    assert "point LMSCOPE_CACHE at a folder you can write" in text
    return text


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_writes_into_a_read_only_cache_are_one_line_and_leave_nothing(shared_cache: tuple[Path, Any]) -> None:
    root, freeze = shared_cache
    (root / "lenses").mkdir()
    freeze()
    assert not writable(root) and not writable(root / "lenses" / "new")
    cases = [lambda: save_artifact(root / "lenses" / "x", {"a": 1}, {"t": torch.ones(2)}),
             lambda: atomic_write_text(root / "gguf" / "model.gguf.sha256", "abc"),
             lambda: check_cache_writable(root / "models" / "m")]
    for write in cases:
        with pytest.raises(CacheFolderError) as info:
            write()
        no_chain = info.value.__context__ is None or info.value.__suppress_context__
        assert info.value.__cause__ is None and no_chain  # no PermissionError traceback under it
        _one_line(info.value, root)
    assert _tree(root) == ["lenses"]


def test_write_failures_elsewhere_name_the_folder_and_reads_are_not_relabelled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    out = (tmp_path / "results").resolve()
    out.mkdir()
    _simulate_read_only(monkeypatch, out)
    with pytest.raises(ArtifactWriteError) as info:
        save_artifact(out / "my-lens", {}, {"t": torch.ones(2)})
    assert type(info.value) is ArtifactWriteError and not in_cache(out)
    assert str(info.value) == (f"Cannot write {out / 'my-lens'}: {out} is not writable (Permission denied). Nothing "
                               "was written; choose a folder you can write.")
    secret = tmp_path / "secret.txt"
    with pytest.raises(PermissionError), atomic_dir(tmp_path / "cache" / "x"):  # a file the body reads: as is
        _refuse(secret)
    with pytest.raises(CacheFolderError, match="Read-only file system"), atomic_dir(tmp_path / "cache" / "y"):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "cache" / "y"))


def _installed_default_gguf() -> Path:
    try:
        return defaults.default_gguf_path()
    except LmscopeError as err:  # pragma: no cover - make installs the default model's package
        pytest.skip(str(err))


def test_the_default_model_loads_from_a_read_only_cache_and_a_missing_copy_fails_before_converting(
        shared_cache: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A converted copy in the shared cache is used as it is (its stamp matches); without one, the conversion
    (15-90 s) is not even started. Only the stamp is faked: no real model is loaded."""
    root, freeze = shared_cache
    gguf = _installed_default_gguf()
    target = root / "models" / defaults.SMOLLM2.name
    target.mkdir(parents=True)
    (target / "lmscope-source.json").write_text(json.dumps(defaults._source_stamp(defaults.SMOLLM2, gguf)))

    def no_conversion(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the GGUF was converted")
    monkeypatch.setattr(defaults, "load_gguf", no_conversion)
    freeze()
    assert defaults.model_dir(defaults.SMOLLM2) == target
    monkeypatch.setattr(defaults, "_source_stamp", lambda model, gguf: {"another": "version"})
    with pytest.raises(CacheFolderError, match=f"^Cannot write {target}: ") as info:
        defaults.model_dir(defaults.SMOLLM2)
    _one_line(info.value, root)


def test_the_cli_prints_it_as_one_error_line_with_status_2(shared_cache: tuple[Path, Any],
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    root, freeze = shared_cache
    _installed_default_gguf()
    monkeypatch.setattr(defaults, "load_gguf", lambda *a, **k: pytest.fail("the GGUF was converted"))
    freeze()
    assert cli.main(["decode", "--model", "default", "--server", "off", "hello"]) == 2
    err = capsys.readouterr().err
    target = root / "models" / defaults.SMOLLM2.name
    assert err.startswith(f"lmscope: error: Cannot write {target}: the lmscope cache folder {root} is not writable")
    assert err.count("\n") == 1 and "LMSCOPE_CACHE" in err and "Traceback" not in err


@pytest.fixture
def tiny_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four small documents standing in for the default corpus (read from outside the cache)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(4):
        (docs / f"{i}.txt").write_text(" ".join(f"w{(7 * i + 3 * j) % 29}" for j in range(300)))
    monkeypatch.setattr(fit, "default_corpus", lambda split="all", **_: Corpus.from_sources(docs, split=split))


def test_a_cached_default_lens_loads_and_a_missing_one_fails_before_fitting(
        shared_cache: tuple[Path, Any], tiny_corpus: None, monkeypatch: pytest.MonkeyPatch,
        one_thread: None) -> None:
    root, freeze = shared_cache
    cached, other = HookedModel(_tiny(seed=0)), HookedModel(_tiny(seed=1))
    lens = fit.default_lens(cached, progress=False, recipe=SMALL)  # filled by whoever set the shared cache up
    assert fit.default_lens_dir(cached).parent == cache_dir() / "lenses"

    def no_fit(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a lens was fitted")
    monkeypatch.setattr(fit, "train_tuned_lens", no_fit)
    freeze()
    assert torch.equal(fit.default_lens(cached, progress=False, recipe=SMALL).weight, lens.weight)
    with pytest.raises(CacheFolderError, match=f"^Cannot write {fit.default_lens_dir(other, SMALL)}: ") as info:
        fit.default_lens(other, progress=False, recipe=SMALL)
    assert f"{root / 'lenses'} in the lmscope cache folder {root} is not writable" in _one_line(info.value, root)


def _tiny(seed: int) -> Any:
    from tiny_models import build_tiny

    return build_tiny("llama", seed=seed)


def test_writable_cache_writes_keep_the_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The error paths changed nothing for a cache that can be written: atomic, and modes from the umask."""
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    before = os.umask(0o027)
    try:
        folder = save_artifact(cache_dir() / "lenses" / "x", {"a": 1}, {"t": torch.ones(2)})
    finally:
        os.umask(before)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o640}
    assert _tree(tmp_path / "cache") == ["lenses", "lenses/x", "lenses/x/config.json", "lenses/x/tensors.safetensors"]
