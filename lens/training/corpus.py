"""Text corpora for lens training and evaluation: streamed, tokenised, cut into fixed-length chunks.

A :class:`Corpus` is built from text files, directories (searched recursively for
text-like files), glob patterns, or a HuggingFace dataset name (``hf:NAME`` or
``hf:NAME:CONFIG``, streamed with ``datasets``; needs a network). Documents come
in a deterministic order (arguments in the order given, directory and glob
matches sorted), are tokenised one by one, joined with the EOS token, and cut
into chunks of ``seq_len`` tokens. Nothing is read until chunks are asked for.

Why it looks like this:

* **Resume** needs the exact same data order: :meth:`Corpus.chunks` takes
  ``skip=N`` to drop the first ``N`` chunks of the same stream.
* **Held-out evaluation** needs text the lens never trained on: every document
  is assigned to ``"train"`` or ``"heldout"`` by a hash of its name (files) or
  its text (dataset records), so the split is stable whatever else changes.
* **Running out of data is loud**: :meth:`Corpus.take` raises
  :class:`CorpusExhaustedError` naming how many tokens were seen and how many
  were asked for; :meth:`Corpus.chunks` can cycle (``repeat=True``) but warns
  each time it starts over.

:func:`~lmscope.lens.training.offline.default_corpus` (also ``lmscope.lens.training.default_corpus``) gives
offline general English from three domains (literature, technical documentation, software licences) as a
:class:`Corpus`; that module builds on this one, never the other way round.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from lmscope.interventions.errors import InputError, LmscopeError

TEXT_SUFFIXES = (".txt", ".rst", ".md", ".text", ".markdown", ".tex", ".org", ".adoc")
Split = Literal["all", "train", "heldout"]


class CorpusError(LmscopeError):
    """A corpus cannot be read (no files, missing ``datasets``, no default corpus available)."""


class CorpusExhaustedError(LmscopeError):
    """The corpus holds fewer tokens than were asked for."""

    def __init__(self, tokens_seen: int, tokens_asked: int, where: str) -> None:
        self.tokens_seen, self.tokens_asked = tokens_seen, tokens_asked
        super().__init__(f"Ran out of data: {where} gave {tokens_seen:,} tokens but {tokens_asked:,} were asked for. "
                         "Add more text, lower the token budget (steps x tokens-per-step), or allow repetition.")


class ByteTokenizer:
    """A dependency-free tokenizer: one token per UTF-8 byte, id ``byte % vocab_size``.

    Used for models without a tokenizer (the tiny random test models). Lossy when
    ``vocab_size < 256``, which is fine for its purpose: every token is one byte,
    so byte counts (for bits/byte) stay exact.
    """

    def __init__(self, vocab_size: int = 256, eos_token_id: int = 0) -> None:
        self.vocab_size, self.eos_token_id = vocab_size, eos_token_id
        self.pad_token_id = eos_token_id

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [b % self.vocab_size for b in text.encode("utf-8")]

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}

    def decode(self, ids: Sequence[int], **_: Any) -> str:
        return bytes(int(i) % 256 for i in ids).decode("latin-1")


def model_tokenizer(model: Any) -> Any:
    """The model's tokenizer, or a :class:`ByteTokenizer` sized to its vocabulary if it has none."""
    tok = getattr(model, "tokenizer", None)
    return tok if tok is not None else ByteTokenizer(int(model.d_vocab))


def _encode(tokenizer: Any, text: str) -> list[int]:
    if hasattr(tokenizer, "encode"):
        try:
            return list(tokenizer.encode(text, add_special_tokens=False))
        except TypeError:
            return list(tokenizer.encode(text))
    return list(tokenizer(text)["input_ids"])


def _eos_id(tokenizer: Any) -> int:
    for attr in ("eos_token_id", "sep_token_id", "pad_token_id", "bos_token_id"):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, int):
            return v
    return 0


def _hash_unit(key: str) -> float:
    """A stable number in [0, 1) from a string (for the held-out split)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big") / 2**64


def expand_sources(sources: Sequence[str | os.PathLike[str]], suffixes: Sequence[str] = TEXT_SUFFIXES) -> list[str]:
    """Files, directories (recursive, sorted) and globs (sorted) -> file list, in argument order, deduplicated.

    ``hf:`` dataset names pass through unchanged. Raises :class:`CorpusError` for a
    path that does not exist or a pattern/directory that matches nothing.
    """
    out: list[str] = []
    seen: set[str] = set()

    def add(p: str) -> None:
        if p not in seen:
            seen.add(p)
            out.append(p)

    for src in sources:
        s = str(src)
        if s.startswith("hf:"):
            add(s)
        elif os.path.isfile(s):
            add(os.path.abspath(s))
        elif os.path.isdir(s):
            found = sorted(str(p) for p in Path(s).rglob("*") if p.is_file() and
                           any(p.name.lower().endswith(x) for x in suffixes))
            if not found:
                raise CorpusError(f"Directory {s} holds no text files (looked for {', '.join(suffixes)}).")
            for f in found:
                add(os.path.abspath(f))
        elif glob.has_magic(s):
            found = sorted(p for p in glob.glob(s, recursive=True) if os.path.isfile(p))
            if not found:
                raise CorpusError(f"The pattern {s!r} matches no files.")
            for f in found:
                add(os.path.abspath(f))
        else:
            raise CorpusError(f"Corpus source {s!r} is not a file, a directory, a glob or an hf:DATASET name.")
    if not out:
        raise CorpusError("The corpus is empty: give at least one file, directory, glob or hf:DATASET.")
    return out


@dataclass(frozen=True)
class Corpus:
    """A deterministic stream of documents, split into train / held-out by a stable hash.

    ``sources``: files, directories, globs or ``hf:NAME[:CONFIG]``; ``split``:
    which documents to yield; ``heldout_fraction``: share of documents held out
    (at least one document is held out, and at least one kept for training, when
    there are two or more); ``text_field``/``hf_split`` configure datasets.
    """

    sources: tuple[str, ...]
    split: Split = "all"
    heldout_fraction: float = 0.1
    text_field: str = "text"
    hf_split: str = "train"
    name: str = field(default="", compare=False)

    @classmethod
    def from_sources(cls, sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                     split: Split = "all", heldout_fraction: float = 0.1, **kwargs: Any) -> Corpus:
        """Build a corpus; single strings are accepted. Paths are checked now (clear error if missing)."""
        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        if split not in ("all", "train", "heldout"):
            raise InputError(f"split must be 'all', 'train' or 'heldout', got {split!r}.")
        if not 0.0 <= heldout_fraction < 1.0:
            raise InputError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}.")
        files = tuple(expand_sources(list(sources)))
        return cls(files, split, heldout_fraction, **kwargs)

    def with_split(self, split: Split) -> Corpus:
        """The same corpus restricted to ``split``."""
        return replace(self, split=split)

    def train(self) -> Corpus:
        return self.with_split("train")

    def heldout(self) -> Corpus:
        return self.with_split("heldout")

    # -- documents -----------------------------------------------------------------------------
    def _file_split(self) -> dict[str, str]:
        files = [s for s in self.sources if not s.startswith("hf:")]
        if not files:
            return {}
        keys = {f: _hash_unit(os.path.basename(f) + "\0" + str(os.path.getsize(f))) for f in files}
        held = {f for f in files if keys[f] < self.heldout_fraction}
        if self.heldout_fraction > 0 and len(files) >= 2:
            if not held:  # guarantee a non-empty held-out set: the file with the smallest hash
                held = {min(files, key=keys.__getitem__)}
            if len(held) == len(files):
                held.discard(max(files, key=keys.__getitem__))
        return {f: ("heldout" if f in held else "train") for f in files}

    def documents(self) -> Iterator[tuple[str, str]]:
        """Yield ``(document_id, text)`` for the selected split, in a fixed order."""
        file_split = self._file_split()
        for src in self.sources:
            if src.startswith("hf:"):
                yield from self._hf_documents(src)
                continue
            if self.split != "all" and file_split.get(src, "train") != self.split:
                continue
            if self.split == "heldout" and len(file_split) < 2:
                continue
            text = Path(src).read_text(encoding="utf-8", errors="replace")
            if text:
                yield src, text

    def _hf_documents(self, src: str) -> Iterator[tuple[str, str]]:
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise CorpusError(f"Reading {src!r} needs the 'datasets' package (pip install datasets) and a network; "
                              "or give local text files instead.") from None
        from datasets import load_dataset

        parts = src[3:].split(":")
        name, config = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None)
        try:
            ds = load_dataset(name, config, split=self.hf_split, streaming=True)
        except Exception as err:  # network / name errors: make the cause plain
            raise CorpusError(f"Could not open the dataset {name!r} (config {config!r}, split {self.hf_split!r}): "
                              f"{err}") from err
        for i, rec in enumerate(ds):
            text = rec.get(self.text_field)
            if not isinstance(text, str):
                raise CorpusError(f"Record {i} of {name!r} has no string field {self.text_field!r}; "
                                  f"fields: {sorted(rec)}. Set text_field.")
            if not text:
                continue
            if self.split != "all":
                part = "heldout" if _hash_unit(text) < self.heldout_fraction else "train"
                if part != self.split:
                    continue
            yield f"{src}#{i}", text

    # -- tokens --------------------------------------------------------------------------------
    def token_stream(self, tokenizer: Any) -> Iterator[int]:
        """All tokens of the selected documents, each document followed by the EOS token."""
        eos = _eos_id(tokenizer)
        for _, text in self.documents():
            yield from _encode(tokenizer, text)
            yield eos

    def chunks(self, tokenizer: Any, seq_len: int, *, skip: int = 0, repeat: bool = False,
               batch_size: int = 1) -> Iterator[list[list[int]]]:
        """Batches of ``batch_size`` chunks of ``seq_len`` tokens each, after skipping ``skip`` chunks.

        The trailing partial chunk is dropped. With ``repeat=True`` the stream starts
        over when it ends (with a warning each time); without it, a final incomplete
        batch raises :class:`CorpusExhaustedError` rather than being silently dropped.
        """
        if seq_len < 2:
            raise InputError(f"seq_len must be at least 2, got {seq_len}.")
        if batch_size < 1 or skip < 0:
            raise InputError(f"batch_size must be >= 1 and skip >= 0 (got {batch_size}, {skip}).")
        index, seen_tokens, epoch = 0, 0, 0
        batch: list[list[int]] = []
        while True:
            buf: list[int] = []
            produced = 0
            for tok in self.token_stream(tokenizer):
                buf.append(tok)
                if len(buf) == seq_len:
                    seen_tokens += seq_len
                    produced += 1
                    if index >= skip:
                        batch.append(buf)
                        if len(batch) == batch_size:
                            yield batch
                            batch = []
                    index += 1
                    buf = []
            seen_tokens += len(buf)
            if not repeat:
                break
            if produced == 0:
                raise CorpusExhaustedError(seen_tokens, seq_len, self.describe())
            epoch += 1
            warnings.warn(f"Corpus {self.describe()} ran out after {seen_tokens:,} tokens; starting pass "
                          f"{epoch + 1} over the same text (repeat=True).", stacklevel=2)
        if batch or index < skip:
            yielded = max(0, index - skip) - len(batch)
            raise CorpusExhaustedError(seen_tokens, (skip + yielded + batch_size) * seq_len, self.describe())

    def take(self, tokenizer: Any, n_chunks: int, seq_len: int, *, skip: int = 0) -> list[list[int]]:
        """Exactly ``n_chunks`` chunks (after ``skip``), or :class:`CorpusExhaustedError` naming the shortfall."""
        out: list[list[int]] = []
        for buf in self.chunks(tokenizer, seq_len, skip=skip, batch_size=1, repeat=False) \
                if n_chunks > 0 else iter(()):
            out.append(buf[0])
            if len(out) == n_chunks:
                return out
        if n_chunks <= 0:
            return out
        raise CorpusExhaustedError((skip + len(out)) * seq_len, (skip + n_chunks) * seq_len, self.describe())

    def count_tokens(self, tokenizer: Any) -> int:
        """Total tokens (with EOS separators) of the selected split: reads the whole corpus."""
        return sum(1 for _ in self.token_stream(tokenizer))

    def digest(self) -> str:
        """A short hash of the selected text's identity: file names and sizes (dataset names as given).

        Cheap (no file is read); a corpus whose files change size or name gets another digest.
        """
        files = [(os.path.basename(s), os.path.getsize(s)) if not s.startswith("hf:") else (s, -1)
                 for s in self.sources]
        blob = json.dumps([self.split, self.heldout_fraction, files])
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def describe(self) -> str:
        base = self.name or (self.sources[0] if len(self.sources) == 1 else
                             f"{len(self.sources)} sources ({os.path.basename(self.sources[0])}, ...)")
        return f"{base} [{self.split}]"


def as_corpus(corpus: Corpus | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
              split: Split | None = None) -> Corpus:
    """Accept a :class:`Corpus` or sources; optionally restrict it to ``split``."""
    c = corpus if isinstance(corpus, Corpus) else Corpus.from_sources(corpus)
    return c.with_split(split) if split is not None else c
