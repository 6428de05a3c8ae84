"""``lmscope serve``: a resident model with a JSON API and an offline web lens explorer.

``state.py`` holds the loaded model, lenses and steering interventions and decodes requests;
``schema.py`` is the versioned request/response schema; ``app.py`` is the FastAPI application
(security middleware, endpoints, the static page); ``runner.py`` runs it with uvicorn (also in a
thread, for tests and benchmarks); ``client.py`` is the stdlib-only client ``lmscope decode`` uses to
reach a running server; ``cli.py`` registers the ``serve`` command. Imports the core and the lens only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmscope.interventions.lazy import lazy_exports

if TYPE_CHECKING:
    from .app import create_app
    from .runner import ServerThread
    from .schema import SCHEMA_VERSION, DecodeRequest, Limits
    from .state import ServerState

_LAZY = {"create_app": ".app", "ServerThread": ".runner", "SCHEMA_VERSION": ".schema", "DecodeRequest": ".schema",
         "Limits": ".schema", "ServerState": ".state"}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
