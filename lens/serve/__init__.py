"""``lmscope serve``: a resident model with a JSON API and an offline web circuit workbench.

``state.py`` holds the loaded model, lenses and steering interventions and decodes requests;
``schema.py`` and ``schema_views.py`` are the versioned request/response schema; ``app.py`` is the FastAPI
application (security middleware, the decode endpoints, the static page) and ``routes.py`` the workbench
endpoints: ``views.py`` computes the light views (lens cell, attention, attribution, neurons), ``heavy.py``
the heavy ones (patching maps, circuit graph, flow routes) as jobs of ``jobs.py``, all under the
interventions ``active.py`` builds (ablations, and steering from ``steering.py``); ``runner.py`` runs the app
with uvicorn (also in a thread, for tests and benchmarks); ``client.py`` is the stdlib-only client
``lmscope decode`` uses to reach a running server; ``cli.py`` registers the ``serve`` command. The page is
``static/`` (plain DOM + SVG). It is the application on top of the core, the lens and the methods
(``lmscope.probes.attribution``, ``patching``, ``circuits``, ``steering``).
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
