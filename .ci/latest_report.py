"""Summarise a `make test-latest` run: which architectures (battery parameters) and test modules broke, on which
library versions. Usage: latest_report.py junit.xml freeze.txt"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
WATCHED = ("torch", "transformers", "accelerate", "nnsight", "safetensors", "numpy", "tokenizers")


def architectures() -> list[str]:
    try:
        from tiny_models import TINY_CONFIGS
    except Exception:  # noqa: BLE001 - the report must print even when the test helpers cannot import
        return []
    return sorted(TINY_CONFIGS, key=len, reverse=True)


def main(junit: str, freeze: str, mode: str = "latest") -> int:
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
    print(f"\nUnit tier: {total} tests, {failed} failed.\n")
    if not broken:
        print("Nothing broke on these versions." + (" pyproject's upper bounds can move up to them (then `make lock`)."
                                                    if mode == "latest" else ""))
        return 0
    print("| what broke | failures | first failure |\n|---|---|---|")
    for group, cases in sorted(broken.items()):
        print(f"| {group} | {len(cases)} | `{cases[0][0]}`: {cases[0][1]} |")
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
