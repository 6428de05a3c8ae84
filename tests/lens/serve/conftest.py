"""Fixtures of the server tests (see serve_helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from serve_helpers import served  # noqa: E402, F401
