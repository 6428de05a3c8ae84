"""Backends attach interventions to a model's forward.

``hooks`` (PyTorch module hooks on the HF model) is the one in use; others (nnsight) sit beside it and
take the same intervention objects. A backend exposes ``attach(model, interventions)``, a context manager
yielding a session whose ``interventions`` and ``cache`` the rest of the core reads.
"""
