"""lmscope research methods, one subpackage each.

- :mod:`lmscope.probes.steering` -- steering vectors from contrast pairs, reading vectors, offline
  evaluations and the alignment/helpfulness trade-off.

Each method holds its tasks/data, its own intervention objects, analyses, plots and CLI command, and
imports only the core (:mod:`lmscope.interventions`) and :mod:`lmscope.lens`, never a sibling's private names.
"""
