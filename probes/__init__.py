"""lmscope research methods, one subpackage each.

- :mod:`lmscope.probes.steering` -- steering vectors from contrast pairs, reading vectors, offline
  evaluations and the alignment/helpfulness trade-off.
- :mod:`lmscope.probes.binding` -- binding IDs (Feng & Steinhardt): binding tasks with exact token spans,
  factorization, position shifts, mean interventions (``BindingShift``), subspace, one-call study.
- :mod:`lmscope.probes.plotting` -- the one plotting helper every method figure goes through (heat map,
  line plot over layers with bands, multi-panel figures; atomic PNG/PDF/SVG writes; returns the Figure).

- :mod:`lmscope.probes.linear` -- cross-validated linear probe sweeps over on-disk activation datasets, with the
  Hewitt & Liang control task, majority and random-init baselines; probe directions as ``Steer``.
- :mod:`lmscope.probes.attribution` -- direct logit attribution per head (and key position), MLP, embedding, bias.
- :mod:`lmscope.probes.anomaly` -- lens prediction-trajectory anomaly detection (Isolation Forest / LOF).

Each method holds its tasks/data, its own intervention objects, analyses, plots and CLI command, and
imports only the core (:mod:`lmscope.interventions`) and :mod:`lmscope.lens`, never a sibling's private names.
"""
