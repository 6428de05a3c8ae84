"""The docs stand alone and stay current (issue 21): what README.md, docs/ and the package docstrings name exists.

``tests/test_layout.py`` already checks that Markdown links resolve and that code blocks import names that
exist. These tests add what a reader meets in the prose: file paths written in backticks, dotted
``lmscope.x.y`` names, citations of files outside the repository, and the docs index listing every page.
The docstrings of the package modules (what ``help()`` shows) are held to the same rules: their ``lmscope.``
names and their repository paths (``interventions/partial.py``, a module file ``sites.py`` beside them) exist.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from pathlib import Path

import pytest
from test_layout import DOCS, ROOT, TOP, lazy_tables, module_names, package_modules

# what the package sources say in docstrings and comments counts too: it is documentation a reader opens
SOURCES = sorted(p for folder in ("interventions", "lens", "probes") for p in (ROOT / folder).rglob("*.py"))
FILE_SUFFIXES = (".py", ".md", ".ipynb", ".jsonl", ".toml", ".json", ".cfg", ".txt")
SOURCE_SUFFIXES = (".py", ".md", ".ipynb", ".jsonl")  # a bare name with these is a repository file, not an output
TOP_FOLDERS = ("interventions/", "lens/", "probes/", "tests/", "docs/", "benchmarks/", "notebooks/")
_BACKTICKED = re.compile(r"`([^`\s]+)`")
_MD_NAME = re.compile(r"(?<![\w/.-])((?:\.\./|\./)?[\w./-]*[\w-]\.md)\b")
ENTRY_POINT_GROUPS = {f"{TOP}.commands"}  # dotted, but names an entry-point group, not a module
_DOTTED = re.compile(rf"(?<![\w.\"']){TOP}(?:\.[A-Za-z_]\w*)+")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


_SKIP = ("build", "__pycache__")


@functools.lru_cache(maxsize=1)
def _walk() -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """(folders, files) of the repository, once: hidden folders (.git, .venv*, caches) and build outputs pruned."""
    dirs, files = [], []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _SKIP]
        dirs.append(Path(dirpath))
        files += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return tuple(dirs), tuple(files)


def _repo_file_names() -> set[str]:
    return {p.name for p in _walk()[1]}


def repo_path_problems(text: str, where: Path, names: set[str]) -> list[str]:
    """Backticked repository paths in ``text`` (written in the file ``where``) that do not exist.

    A backticked token is a repository path when it starts with a top-level folder (``lens/...``) or has
    a folder and a source/doc suffix (``training/fit.py``); it must exist relative to the repository
    root, the file's folder, or (for a path inside a package) some package folder. A bare file name
    (``fit.py``) must name some file in the repository. Globs, placeholders and ``~``/URL paths are skipped.
    """
    bad = []
    for token in _BACKTICKED.findall(text):
        token = token.rstrip(".,:;")
        if any(c in token for c in "*<>{}$~:=(),'\"") or token.startswith(("-", "/")):
            continue
        bare = token.rstrip("/")
        if token.startswith(TOP_FOLDERS) or ("/" in bare and bare.endswith(FILE_SUFFIXES)):
            candidates = [ROOT / bare, where.parent / bare]
            first = bare.split("/")[0]
            candidates += [d / bare for d in _walk()[0] if d.name == first]
            candidates += [d.parent / bare for d in _walk()[0] if d.name == first]
            # a path only counts inside the repository: `../shared/x.md` may exist on one machine, not in a clone
            if not any(c.exists() and c.resolve().is_relative_to(ROOT) for c in candidates):
                bad.append(f"{_rel(where)}: `{token}` does not exist")
        elif "/" not in bare and bare.endswith(SOURCE_SUFFIXES) and bare not in names:
            bad.append(f"{_rel(where)}: `{token}` names no file in the repository")
    return bad


def outside_citations(text: str, where: Path, names: set[str]) -> list[str]:
    """Files outside the repository that ``text`` cites: ``../`` paths leaving it, ``*.md`` it does not hold."""
    bad = []
    for name in _MD_NAME.findall(text):
        target = (where.parent / name).resolve() if name.startswith("../") else None
        if target is not None and (ROOT.resolve() not in target.parents or not target.exists()):
            bad.append(f"{_rel(where)}: cites {name}, outside the repository")
        elif name.split("/")[-1] not in names:
            bad.append(f"{_rel(where)}: cites {name}, which the repository does not hold")
    return bad


def test_backticked_paths_exist() -> None:
    names = _repo_file_names()
    bad = [p for doc in DOCS for p in repo_path_problems(doc.read_text(encoding="utf-8"), doc, names)]
    assert bad == []


def test_no_doc_cites_a_file_outside_the_repository() -> None:
    names = _repo_file_names()
    bad = [p for doc in [*DOCS, *SOURCES] for p in outside_citations(doc.read_text(encoding="utf-8"), doc, names)]
    assert bad == []


def test_checks_catch_stale_and_outside_paths(tmp_path: Path) -> None:
    """The checkers fire on what issue 21 found, and stay quiet on paths that exist or are user examples."""
    doc = ROOT / "docs" / "x.md"
    names = _repo_file_names()
    text = ("Code: `lens/train.py`, `lens/training/fit.py`, `training/fit.py`, `fit.py`, `nope.py`. "
            "Background: `../shared/METHODS.md` §4; METHODS.md says; see `my-lens`, `texts/*.txt`, `out/`, "
            "[usage](usage.md), `docs/README.md`, `~/.cache/lmscope`, `probes/steering/data/`.")
    assert repo_path_problems(text, doc, names) == [
        "docs/x.md: `lens/train.py` does not exist", "docs/x.md: `nope.py` names no file in the repository",
        "docs/x.md: `../shared/METHODS.md` does not exist"]
    assert outside_citations(text, doc, names) == [
        "docs/x.md: cites ../shared/METHODS.md, outside the repository",
        "docs/x.md: cites METHODS.md, which the repository does not hold"]


def dotted_name_problems(text: str, where: Path, modules: dict[str, Path],
                         lazy: dict[str, dict[str, str]]) -> list[str]:
    """``lmscope.a.b[.name]`` in ``text`` whose module does not exist or does not define the trailing name."""
    bad = []
    for dotted in set(_DOTTED.findall(text)) - ENTRY_POINT_GROUPS:
        dotted = dotted.rstrip(".")
        parts = dotted.split(".")
        k = max((i for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules), default=0)
        if k == 0:
            bad.append(f"{_rel(where)}: {dotted}: no such module")
            continue
        module, rest = ".".join(parts[:k]), parts[k:]
        if rest and rest[0] not in module_names(modules[module]) | set(lazy.get(module, {})):
            bad.append(f"{_rel(where)}: {dotted}: {module} has no {rest[0]}")
    return sorted(bad)


@pytest.fixture(scope="module")
def modules_and_lazy() -> tuple[dict[str, Path], dict[str, dict[str, str]]]:
    modules = package_modules(ROOT)
    return modules, lazy_tables(modules)


def test_dotted_lmscope_names_exist(modules_and_lazy: tuple[dict[str, Path], dict[str, dict[str, str]]]) -> None:
    modules, lazy = modules_and_lazy
    bad = [p for doc in DOCS for p in dotted_name_problems(doc.read_text(encoding="utf-8"), doc, modules, lazy)]
    assert bad == []
    # and the checker fires
    doc = ROOT / "docs" / "x.md"
    assert dotted_name_problems("`lmscope.lens.train` and lmscope.lens.formats.nothing_here, "
                                "lmscope.lens.formats.load_tuned_lens_folder, lmscope.interventions.",
                                doc, modules, lazy) == [
        "docs/x.md: lmscope.lens.formats.nothing_here: lmscope.lens.formats has no nothing_here",
        "docs/x.md: lmscope.lens.train: lmscope.lens has no train"]


def test_every_docs_page_is_in_the_index() -> None:
    """docs/README.md links every page under docs/ (a new page must be listed to be found)."""
    index = ROOT / "docs" / "README.md"
    linked = {(index.parent / t).resolve() for t in re.findall(r"\]\(([^)#\s]+)", index.read_text(encoding="utf-8"))}
    pages = {p.resolve() for p in (ROOT / "docs").rglob("*.md") if p != index}
    assert sorted(_rel(p) for p in pages - linked) == []


def test_every_public_hooked_model_method_is_documented() -> None:
    """Each public method of ``HookedModel`` is named somewhere in README.md or docs/ (issue 21: ``to_str_tokens``)."""
    import ast

    tree = ast.parse((ROOT / "interventions" / "model.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "HookedModel")
    public = sorted(n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and not n.name.startswith("_"))
    assert "to_str_tokens" in public
    text = "\n".join(doc.read_text(encoding="utf-8") for doc in DOCS)
    assert [m for m in public if not re.search(rf"\b{m}\b", text)] == []


def _families(text: str, start: str) -> list[str]:
    """The comma-separated model families after ``start`` up to the next full stop or parenthesis."""
    head = text.split(start, 1)[1]
    head = re.split(r"\.\s|\s\((?!text\))", head, maxsplit=1)[0]
    return [f.strip().replace("\n", " ") for f in head.replace("\n", " ").split(",") if f.strip()]


def test_usage_lists_the_readme_architectures() -> None:
    """docs/usage.md names the same supported families as the README's "Supported architectures" (issue 21)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8").split("## Supported architectures", 1)[1]
    usage = (ROOT / "docs" / "usage.md").read_text(encoding="utf-8")
    expected = _families("\n" + readme.strip(), "\n")
    assert len(expected) >= 15 and "Falcon" in expected[-1]
    assert _families(usage, "Supported:") == expected


def test_concepts_names_every_method_package() -> None:
    """docs/concepts.md lists each method subpackage of ``probes/`` (it said "``steering`` today")."""
    methods = sorted(p.parent.name for p in (ROOT / "probes").glob("*/__init__.py"))
    text = (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8")
    assert len(methods) >= 7 and [m for m in methods if f"`{m}`" not in text] == []


# -- the package's docstrings ---------------------------------------------------------------------------------
PACKAGE_SOURCES = [ROOT / "__init__.py", *SOURCES]
#: A plain-text repository path in a docstring: a top-level folder, then a file with a known suffix or a folder.
_FOLDERS_RE = "|".join(re.escape(f) for f in TOP_FOLDERS)
_SUFFIXES_RE = "|".join(re.escape(s) for s in FILE_SUFFIXES)
_PLAIN_PATH = re.compile(rf"(?<![\w./`-])((?:{_FOLDERS_RE})[\w./-]*(?:{_SUFFIXES_RE}|/))(?![\w/-])")
#: Bare ``*.py`` names that are other projects' files, not ours: HF's per-model modules, and a file named
#: right after its project ("TransformerLens ``patching.py``", "transformers' ``modeling_utils.py``").
_EXTERNAL_FILE = re.compile(r"^(?:modeling|configuration|tokenization|convert)_\w+\.py$")
_EXTERNAL_PROJECT = re.compile(r"(?:TransformerLens|transformers|nnsight|accelerate|PyTorch|torch|tuned[-_]lens|"
                               r"safetensors|uvicorn|HF|Hugging Face)(?:'s?|\u2019s?)?\s+`+$")


def docstrings(path: Path) -> list[str]:
    """The docstrings of a module: its own and every class's and function's (what ``help()`` shows)."""
    nodes = ast.walk(ast.parse(path.read_text(encoding="utf-8")))
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [d for n in nodes if isinstance(n, kinds) and (d := ast.get_docstring(n, clean=False))]


def _exists(path: Path) -> bool:
    return path.exists() and path.resolve().is_relative_to(ROOT.resolve())


def docstring_path_problems(text: str, where: Path) -> list[str]:
    """Repository paths in a docstring of the module ``where`` that do not exist.

    Checked: backticked or plain paths whose first folder is a top-level one (``probes/binding/runs.py``,
    ``docs/errors.md``; from the repository root), backticked paths whose first folder sits beside the module
    (``backends/hooks.py``), and backticked bare module files (``sites.py``), which must sit beside the module.
    Skipped: other projects' files (``modeling_llama.py``, TransformerLens ``patching.py``), placeholders
    (``DATA.jsonl``, ``<dir>``), outputs and user examples (``config.json``, ``my-lens/``, ``./x``).
    """
    bad = []
    found = [(m.group(1), m.start()) for m in _BACKTICKED.finditer(text)]
    found += [(m.group(1), m.start()) for m in _PLAIN_PATH.finditer(text)]
    for token, start in found:
        token = token.rstrip(".,:;")
        bare = token.rstrip("/")
        if any(c in token for c in "*<>{}$~:=(),'\"") or token.startswith(("-", "/", ".")) or not bare:
            continue  # globs, placeholders, options, absolute and ``./x``-style example paths
        first = bare.split("/")[0]
        if token.startswith(TOP_FOLDERS):
            ok = _exists(ROOT / bare)
        elif "/" in bare:
            ok = not (where.parent / first).is_dir() or _exists(where.parent / bare)
        elif bare.endswith(".py") and not _EXTERNAL_FILE.match(bare) \
                and not _EXTERNAL_PROJECT.search(text[max(0, start - 40):start + 1]):
            ok = _exists(where.parent / bare)
        else:
            continue
        if not ok:
            bad.append(f"{_rel(where)}: `{token}` does not exist" if "/" in bare else
                       f"{_rel(where)}: `{token}` is not a module beside it")
    return sorted(set(bad))


def source_docstring_problems(modules: dict[str, Path], lazy: dict[str, dict[str, str]]) -> list[str]:
    """Every stale path or ``lmscope.`` name in the docstrings of the package's modules."""
    bad: set[str] = set()
    for src in PACKAGE_SOURCES:
        for doc in docstrings(src):
            bad.update(docstring_path_problems(doc, src))
            bad.update(dotted_name_problems(doc, src, modules, lazy))
    return sorted(bad)


def test_source_docstrings_name_what_exists(
        modules_and_lazy: tuple[dict[str, Path], dict[str, dict[str, str]]]) -> None:
    modules, lazy = modules_and_lazy
    assert source_docstring_problems(modules, lazy) == []


def test_docstring_checker_fires_on_stale_names_only(
        modules_and_lazy: tuple[dict[str, Path], dict[str, dict[str, str]]]) -> None:
    """What the interventions/ docstring said (``hooks.py`` beside it, ``steering.py``) fires; other projects'
    names, placeholders and user paths do not."""
    where = ROOT / "interventions" / "__init__.py"
    text = ("``sites.py`` parses, ``hooks.py`` attaches, ``steering.py`` builds; ``backends/hooks.py`` and "
            "``backends/gone.py``; see probes/binding/runs.py, docs/errors.md, probes/nowhere.py and "
            "``probes/data``; TransformerLens ``patching.py`` style, ``modeling_llama.py``, "
            "``transformers/models/llama/modeling_llama.py``, ``transformers.models.llama``, a lens/condition, "
            "``my-lens/``, ``./x``, ``DATA.jsonl``, ``config.json``, ``lmscope.interventions.steering_cli``, "
            "``lmscope.interventions.partial.partial_model``.")
    assert docstring_path_problems(text, where) == [
        "interventions/__init__.py: `backends/gone.py` does not exist",
        "interventions/__init__.py: `hooks.py` is not a module beside it",
        "interventions/__init__.py: `probes/data` does not exist",
        "interventions/__init__.py: `probes/nowhere.py` does not exist",
        "interventions/__init__.py: `steering.py` is not a module beside it"]
    modules, lazy = modules_and_lazy
    assert dotted_name_problems(text, where, modules, lazy) == [
        "interventions/__init__.py: lmscope.interventions.steering_cli: lmscope.interventions has no steering_cli"]
    assert len(docstrings(where)) == 1 and "Where things live" in docstrings(where)[0]


def _listed_kinds(text: str, bullet: str) -> list[str]:
    """The backticked site kinds of the api-core.md bullet starting with ``bullet`` (``resid_pre.L`` -> resid_pre)."""
    item = text.split(f"\n- {bullet}", 1)[1].split("\n- ", 1)[0].split("\n\n", 1)[0]
    return [t.removesuffix(".L") for t in re.findall(r"`([a-z_][a-z_0-9]*(?:\.L)?)`", item)]


def test_api_core_lists_every_site_kind() -> None:
    """docs/api-core.md lists the code's site kinds, in the code's order (it once listed 10 of 19)."""
    from lmscope.interventions.sites import LAYER_SITES, MODEL_SITES

    text = (ROOT / "docs" / "api-core.md").read_text(encoding="utf-8")
    assert _listed_kinds(text, "per layer") == list(LAYER_SITES)
    assert _listed_kinds(text, "once per model") == list(MODEL_SITES)
