"""docs/api-core.md lists every public attribute, property and method of ``HookedModel`` as ``m.<name>`` (class
methods as ``HookedModel.<name>``; issue 29: ``n_kv_heads``, ``d_mlp``, ``mlp_output_projection``... were missing)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _public_names() -> list[str]:
    """Methods, properties (``def`` or ``name = property(...)``) and the attributes ``__init__`` sets, if public."""
    tree = ast.parse((ROOT / "interventions" / "model.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "HookedModel")
    names = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    names |= {t.id for n in cls.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    names |= {t.attr for n in ast.walk(init) if isinstance(n, (ast.Assign, ast.AnnAssign))
              for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
              if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
    return sorted(n for n in names if not n.startswith("_"))


def test_api_core_lists_every_model_attribute() -> None:
    names = _public_names()
    assert {"n_kv_heads", "d_mlp", "mlp_output_projection", "unembed_weight", "run_with_cache"} <= set(names)
    text = (ROOT / "docs" / "api-core.md").read_text(encoding="utf-8")
    assert [n for n in names if not re.search(rf"\b(m|HookedModel)\.{n}\b", text)] == []
