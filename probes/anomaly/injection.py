"""The worked example: prompts with an injected instruction hidden in the text vs the same prompts without.

Each example is ``{instruction, text, injection}`` (``data/injection.jsonl``, 40 short news-like texts, 4
tasks, 6 injection phrasings). The plain prompt and the injected one end with the same tokens (the answer
cue), so a detector reading the last token's trajectory cannot win by looking at the final token itself.
"""

from __future__ import annotations

import json
from importlib import resources

TEMPLATE = "{instruction}\n\nText: {text}{injection}\n\nAnswer:"


def load_injection_example(n: int | None = None) -> tuple[list[str], list[str]]:
    """``(plain, injected)`` prompt lists of equal length (the first ``n`` examples, or all 40)."""
    lines = resources.files(__package__).joinpath("data/injection.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(x) for x in lines if x.strip()][:n]
    plain = [TEMPLATE.format(instruction=r["instruction"], text=r["text"], injection="") for r in rows]
    injected = [TEMPLATE.format(**r) for r in rows]
    return plain, injected
