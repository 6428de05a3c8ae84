"""When lmscope draws a progress bar: only where someone watches it.

A tqdm bar written to a log file or a pipe leaves one carriage-returned line per update (kilobytes of them in a
CI log), so a bar is drawn only on a terminal. tqdm decides that itself when ``disable=None``: it checks that
its stream (stderr by default) is a terminal, and a notebook's widget bar (``tqdm.auto`` in Jupyter) always
shows. ``progress=False`` turns the bar off everywhere.
"""

from __future__ import annotations


def bar_disable(progress: bool) -> bool | None:
    """tqdm's ``disable`` for a caller's ``progress`` flag: ``None`` (a bar only on a terminal or in a notebook)
    when it is on, ``True`` (no bar) when it is off."""
    return None if progress else True
