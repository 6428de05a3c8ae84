"""Print pyproject's dependencies (and its dev extra's) with every upper bound removed, for `make test-latest`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib


def uncapped(requirement: str) -> str:
    """``"transformers>=5.23,<5.26"`` -> ``"transformers>=5.23"``; extras like ``lmscope[serve]`` are skipped."""
    name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
    specs = [s.strip() for s in requirement[len(name):].split(",") if s.strip()]
    kept = [s for s in specs if not s.startswith(("<", "=="))]
    return name + ",".join(kept)


def main() -> int:
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("dev", "serve", "nnsight"):
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    for req in reqs:
        if not req.startswith("lmscope"):
            print(uncapped(req))
    return 0


if __name__ == "__main__":
    sys.exit(main())
