"""Print pyproject's dependencies (and its dev extra's) with every upper bound removed, for `make test-latest`;
with ``--oldest``, the libraries with a tested range (torch, transformers, accelerate, nnsight) pinned to their lower
bound instead, for `make test-oldest`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib


def uncapped(requirement: str) -> str:
    """``"transformers>=5.24,<5.26"`` -> ``"transformers>=5.24"``; extras like ``lmscope[serve]`` are skipped."""
    name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
    specs = [s.strip() for s in requirement[len(name):].split(",") if s.strip()]
    kept = [s for s in specs if not s.startswith(("<", "=="))]
    return name + ",".join(kept)


def lowest(requirement: str) -> str | None:
    """``"transformers>=5.24,<5.26"`` -> ``"transformers==5.24.0"`` (None without both bounds)."""
    name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
    specs = [s.strip() for s in requirement[len(name):].split(",") if s.strip()]
    lower = [s[2:] for s in specs if s.startswith(">=")]
    if not lower or not any(s.startswith("<") for s in specs):
        return None
    return f"{name}=={lower[0]}" if lower[0].count(".") >= 2 else f"{name}=={lower[0]}.0"


def main() -> int:
    oldest = "--oldest" in sys.argv
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("dev", "serve", "nnsight"):
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    for req in reqs:
        if not req.startswith("lmscope"):
            print((oldest and lowest(req)) or uncapped(req))
    return 0


if __name__ == "__main__":
    sys.exit(main())
