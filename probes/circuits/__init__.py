"""Edge-level circuits: the edge graph, the edge-level forward (``EdgePatch``), edge attribution (EAP, EAP-IG,
exact edge patching), path patching, circuits and their faithfulness.

``graph`` defines nodes (embedding, heads, MLPs), targets (each head's q/k/v input, each MLP's input, the
logits) and edges; ``nodes`` what each node writes into the stream in one forward; ``projection`` a target's
input through its block's norm and its head's projection; ``patch`` the :class:`EdgePatch` intervention;
``circuit`` a :class:`Circuit` (a set of edges, picked from :class:`EdgeScores`, pruned by ``pruning``),
drawn by ``plot`` and ``interactive`` (HTML); ``faithfulness`` and ``curve`` how much of the behaviour circuits keep;
``paths`` path patching; ``flow`` information flow routes (one forward, a token x layer contribution graph);
``tasks`` ready-made pair datasets (IOI, capitals, JSONL); ``study`` the notebook's full study; ``cli`` is
``lmscope circuit``. docs/circuits.md explains nodes, edges and when each method is exact or an estimate.
"""

from typing import TYPE_CHECKING

from lmscope.interventions.lazy import lazy_exports

if TYPE_CHECKING:
    from .attribution import edge_attribution
    from .circuit import Circuit
    from .curve import FaithfulnessCurve, faithfulness_curve
    from .faithfulness import Faithfulness, evaluate_circuit, evaluate_circuits
    from .flow import FlowGraph, flow_routes
    from .graph import EdgeGraph
    from .nodes import node_means, node_outputs
    from .patch import EdgePatch
    from .paths import PathPatchingResult, path_patch
    from .pruning import prune
    from .scores import EdgeScores
    from .study import CircuitStudy, circuit_study
    from .tasks import PairTask, capital_pairs, ioi_pairs, load_pairs

_LAZY = {
    "FlowGraph": ".flow",
    "flow_routes": ".flow",
    "Circuit": ".circuit",
    "CircuitStudy": ".study",
    "circuit_study": ".study",
    "Faithfulness": ".faithfulness",
    "FaithfulnessCurve": ".curve",
    "evaluate_circuit": ".faithfulness",
    "evaluate_circuits": ".faithfulness",
    "faithfulness_curve": ".curve",
    "prune": ".pruning",
    "EdgeGraph": ".graph",
    "EdgeScores": ".scores",
    "PairTask": ".tasks",
    "PathPatchingResult": ".paths",
    "capital_pairs": ".tasks",
    "ioi_pairs": ".tasks",
    "load_pairs": ".tasks",
    "path_patch": ".paths",
    "edge_attribution": ".attribution",
    "EdgePatch": ".patch",
    "node_means": ".nodes",
    "node_outputs": ".nodes",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
