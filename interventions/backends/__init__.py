"""Backends attach interventions to a model's forward.

``hooks`` (PyTorch module hooks on the HF model, with ``attention`` for the sites inside the attention
function) is the one in use; ``nnsight`` sits beside it and takes the same intervention objects. Both build
their sessions with ``session`` (validate, bind, start, group per site, forward order, context-local
activation) and differ only in how they reach each site's value. The hooks backend exposes
``attach(model, interventions)``, a context manager yielding a session whose ``interventions`` and ``cache``
the rest of the core reads.
"""
