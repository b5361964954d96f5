"""Backend-free core shared by ``pyroflows`` (PyTorch + Pyro) and ``numpyroflows`` (JAX + NumPyro).

NumPy only: it never imports torch or JAX, so each package imports it without pulling in the other's backend.

- :mod:`flowcommon.fit`: ``fit``'s history record, data checks, validation split, step budget and batch order.
- :mod:`flowcommon.diagnostics`: PSIS k̂, importance-weighted bounds, verdicts and the ArviZ container.
- :mod:`flowcommon.arviz_compat`: the single adapter between ArviZ 0.x (``InferenceData``) and 1.x (``DataTree``).
"""
