"""Summarise a `make test-latest` run: which architectures (battery parameters) and test modules broke, on which
library versions, under which pip-wide caps, in how large a venv; and whether pyproject's upper bounds can move
(only when a version above them was actually tested). Usage: latest_report.py junit.xml freeze.txt [mode] [venv]"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
WATCHED = ("torch", "transformers", "accelerate", "nnsight", "safetensors", "numpy", "tokenizers")
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def pip_caps(listing: str, environ: dict[str, str] | None = None) -> list[tuple[str, list[str]]]:
    """The constraint files pip applies to every install here (``pip config list`` lines ``*.constraint='...'``
    and ``PIP_CONSTRAINT``), each with its requirement lines: caps the run could not see past."""
    environ = dict(os.environ) if environ is None else environ
    files = re.findall(r"^[\w:.-]*\bconstraint='?([^'\n]*)'?$", listing, re.M)
    files += environ.get("PIP_CONSTRAINT", "").split()
    caps = []
    for name in dict.fromkeys(f for chunk in files for f in chunk.split() if f):
        try:
            text = Path(name).read_text()
        except OSError:
            continue
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        if lines:
            caps.append((name, lines))
    return caps


def folder_size(path: str | Path) -> int:
    """Bytes of the files under ``path`` (links not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version.split("+")[0])[:3])


def above_bounds(versions: dict[str, str], requirements: list[str]) -> list[str]:
    """``"torch 2.15.0 (pyproject: <2.15)"`` for each installed version at or above its requirement's upper bound."""
    out = []
    for req in requirements:
        name = re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0]
        bound = re.search(r"<\s*([\d.]+)", req)
        installed = versions.get(name)
        if bound and installed and _release(installed) >= _release(bound.group(1)):
            out.append(f"{name} {installed} (pyproject: <{bound.group(1)})")
    return out


def pyproject_requirements() -> list[str]:
    import tomllib

    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return list(project["dependencies"]) + [r for extra in project.get("optional-dependencies", {}).values()
                                            for r in extra]


def closing_line(mode: str, above: list[str], capped: bool) -> str:
    """What a clean run lets one conclude: bounds can move only when a version above them was tested."""
    if mode != "latest":
        return "Nothing broke on these versions."
    if above:
        return ("Nothing broke on these versions, and these are above pyproject's upper bounds: "
                f"{', '.join(above)}; the bounds can move up to them (then `make lock`).")
    why = " (under the caps above)" if capped else ""
    return ("Nothing broke on these versions, but every one is within pyproject's bounds: the registry offered "
            f"nothing newer{why}, so this run says nothing about moving them.")


def architectures() -> list[str]:
    try:
        from tiny_models import TINY_CONFIGS
    except Exception:  # noqa: BLE001 - the report must print even when the test helpers cannot import
        return []
    return sorted(TINY_CONFIGS, key=len, reverse=True)


def environment(versions: dict[str, str], venv: str | None) -> list[str]:
    """Lines on what the run ran under: the pip-wide caps and the venv's size."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    caps = pip_caps(listing)
    lines = [f"pip-wide caps in force: {', '.join(reqs)} (from {name}); releases above them were not tried."
             for name, reqs in caps] or ["pip-wide caps in force: none."]
    if venv:
        lines.append(f"{venv}: {folder_size(venv) / 1e9:.1f} GB.")
    return lines


def main(junit: str, freeze: str, mode: str = "latest", venv: str | None = None) -> int:
    versions = dict(line.split("==", 1) for line in Path(freeze).read_text().splitlines() if "==" in line)
    archs = architectures()
    suite = ET.parse(junit).getroot()
    broken: dict[str, list[tuple[str, str]]] = defaultdict(list)
    total = failed = 0
    for case in suite.iter("testcase"):
        total += 1
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is None:
            continue
        failed += 1
        name = case.get("name", "")
        params = re.findall(r"\[(.*)\]", name)
        arch = next((a for a in archs if params and re.search(rf"(^|-){re.escape(a)}($|-)", params[0])), None)
        group = f"architecture {arch}" if arch else f"module {case.get('classname', '?')}"
        message = (problem.get("message") or "").strip().splitlines()
        broken[group].append((name, message[0][:200] if message else ""))
    print(f"# make test-{mode}\n")
    print("Versions: " + ", ".join(f"{p} {versions.get(p, '?')}" for p in WATCHED))
    lines = environment(versions, venv)
    print("\n".join(lines))
    print(f"\nUnit tier: {total} tests, {failed} failed.\n")
    if not broken:
        print(closing_line(mode, above_bounds(versions, pyproject_requirements()), not lines[0].endswith("none.")))
        return 0
    print("| what broke | failures | first failure |\n|---|---|---|")
    for group, cases in sorted(broken.items()):
        print(f"| {group} | {len(cases)} | `{cases[0][0]}`: {cases[0][1]} |")
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
