"""Corpus: sources, deterministic chunking, skip (resume), held-out split, loud out-of-data errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from lmscope.lens.training.corpus import ByteTokenizer, Corpus, CorpusError, CorpusExhaustedError


def write_docs(root: Path, n: int = 6, size: int = 400) -> Path:
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        target = root / ("sub" if i % 2 else "") / f"doc{i}.txt"
        target.write_text(" ".join(f"w{(i * 7 + j) % 13}" for j in range(size // 4)))
    (root / "ignored.bin").write_bytes(b"\x00\x01")
    return root


def test_sources_dir_glob_file(tmp_path: Path) -> None:
    root = write_docs(tmp_path)
    c = Corpus.from_sources(root)
    assert len(c.sources) == 6 and all(s.endswith(".txt") for s in c.sources)
    g = Corpus.from_sources(str(root / "**" / "*.txt"))
    assert sorted(g.sources) == sorted(c.sources)
    one = Corpus.from_sources(root / "doc0.txt")
    assert [d for d, _ in one.documents()] == [str(root / "doc0.txt")]
    with pytest.raises(CorpusError, match="not a file"):
        Corpus.from_sources(tmp_path / "missing.txt")
    with pytest.raises(CorpusError, match="matches no files"):
        Corpus.from_sources(str(tmp_path / "*.nothing"))


def test_chunks_deterministic_skip_and_eos(tmp_path: Path) -> None:
    c = Corpus.from_sources(write_docs(tmp_path))
    tok = ByteTokenizer(97)
    a = c.take(tok, 10, 16)
    assert a == c.take(tok, 10, 16) and all(len(x) == 16 for x in a)
    assert c.take(tok, 4, 16, skip=6) == a[6:]
    stream = list(c.token_stream(tok))
    assert stream.count(0) == 6 and stream[-1] == 0  # each document ends with the EOS id
    assert [t for ch in a for t in ch] == stream[:160]


def test_out_of_data_is_loud(tmp_path: Path) -> None:
    c = Corpus.from_sources(write_docs(tmp_path, n=2, size=80))
    tok = ByteTokenizer(97)
    total = c.count_tokens(tok)
    with pytest.raises(CorpusExhaustedError, match="Ran out of data") as err:
        c.take(tok, total // 8 + 5, 8)
    assert err.value.tokens_asked > err.value.tokens_seen
    with pytest.raises(CorpusExhaustedError):  # an incomplete last batch is not dropped silently
        list(c.chunks(tok, 8, batch_size=total // 8 + 1))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        it = c.chunks(tok, 8, repeat=True)
        got = [next(it) for _ in range(total // 8 + 3)]
    assert len(got) == total // 8 + 3 and any("ran out" in str(x.message) for x in w)


def test_heldout_split_disjoint_and_stable(tmp_path: Path) -> None:
    c = Corpus.from_sources(write_docs(tmp_path, n=8), heldout_fraction=0.25)
    train = [d for d, _ in c.train().documents()]
    held = [d for d, _ in c.heldout().documents()]
    assert held and train and not set(train) & set(held)
    assert sorted(train + held) == sorted(d for d, _ in c.documents())
    assert held == [d for d, _ in c.heldout().documents()]


def test_hf_dataset_needs_datasets(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    c = Corpus(("hf:wikitext:wikitext-2-raw-v1",))
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(CorpusError, match="datasets"):
            next(c.documents())


def test_batches_follow_chunk_order(tmp_path: Path) -> None:
    c = Corpus.from_sources(write_docs(tmp_path))
    tok = ByteTokenizer(97)
    flat = c.take(tok, 7, 16)
    batches = []
    for b in c.chunks(tok, 16, batch_size=3, skip=1):
        batches.append(b)
        if len(batches) == 2:
            break
    assert [x for b in batches for x in b] == flat[1:7]
