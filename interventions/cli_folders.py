"""What a command's output folder already holds, and the refusal to write another kind of artifact over it.

Every command that writes a folder (``train-lens --out``, ``patch --out``, ``overthinking --out``, ``probe --out``,
``steer --save``) calls :func:`check_out_folder` before the model loads. A folder that is absent or empty is
written; one holding the same kind of artifact is replaced (or, for a dataset, resumed) as before; one holding
another kind of artifact, or files lmscope did not write, is refused with a :class:`CliError` naming what it
holds, unless ``--force`` is given: the writers replace the whole folder atomically, so what it held would be
lost silently otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli import CliError

#: (file in the folder, what a folder holding it is), first match wins: the files each artifact's ``save`` writes.
MARKERS: tuple[tuple[str, str], ...] = (
    ("lens.safetensors", "a tuned lens"),
    ("params.pt", "a tuned lens (tuned-lens package format)"),
    ("steering.json", "a steering vector"),
    ("patching.json", "a patching result"),
    ("report.json", "an overthinking report"),
    ("index.json", "an activation dataset"),
    ("scores/edge_scores.json", "a circuit study"),
    ("config.json", "a saved lmscope intervention"),
)


def folder_holds(path: str | Path) -> str | None:
    """What ``path`` holds: one of :data:`MARKERS`' descriptions, ``"other files"``, ``"a file"`` (not a folder),
    or None (absent or empty)."""
    folder = Path(path)
    if not folder.exists():
        return None
    if not folder.is_dir():
        return "a file"
    for name, what in MARKERS:
        if (folder / name).is_file():
            return what
    return "other files" if any(folder.iterdir()) else None


def check_out_folder(path: str | Path, writes: str, force: bool, option: str = "--out") -> str | None:
    """Refuse (a :class:`CliError`) to write ``writes`` (a :data:`MARKERS` description) into ``path`` when it holds
    anything else, unless ``force``; returns what it holds (None: absent or empty)."""
    held = folder_holds(path)
    if held is None or held == writes or force:
        return held
    raise CliError(f"{option} {str(path)!r} already holds {held}; this command would replace it with {writes}. "
                   f"Pass --force to replace it, or choose another {option}.")


def add_force_arg(parser: argparse.ArgumentParser, what: str = "--out") -> None:
    """The ``--force`` option of a command that writes a folder (see :func:`check_out_folder`)."""
    parser.add_argument("--force", action="store_true",
                        help=f"replace what {what} already holds even when it is another kind of artifact or run "
                             "(default: refuse)")
