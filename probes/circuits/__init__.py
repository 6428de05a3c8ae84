"""Edge-level circuits: the edge graph, the edge-level forward (``EdgePatch``), edge attribution (EAP, EAP-IG,
exact edge patching), path patching, circuits and their faithfulness.

``graph`` defines nodes (embedding, heads, MLPs), targets (each head's q/k/v input, each MLP's input, the
logits) and edges; ``nodes`` what each node writes into the stream in one forward; ``projection`` a target's
input through its block's norm and its head's projection; ``patch`` the :class:`EdgePatch` intervention.
"""

from typing import TYPE_CHECKING

from lmscope.interventions.lazy import lazy_exports

if TYPE_CHECKING:
    from .attribution import edge_attribution
    from .graph import EdgeGraph
    from .nodes import node_means, node_outputs
    from .patch import EdgePatch
    from .paths import PathPatchingResult, path_patch
    from .scores import EdgeScores

_LAZY = {
    "EdgeGraph": ".graph",
    "EdgeScores": ".scores",
    "PathPatchingResult": ".paths",
    "path_patch": ".paths",
    "edge_attribution": ".attribution",
    "EdgePatch": ".patch",
    "node_means": ".nodes",
    "node_outputs": ".nodes",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
