"""Diagnostics for variational inference: PSIS k̂, importance-weighted bounds and ArviZ ``InferenceData``.

``vi_diagnostics(guide, model, *args)`` says, in numbers and in words, whether a guide can be trusted (Yao et al.
2018); ``to_inference_data(guide, model, *args)`` hands its draws to ArviZ (``az.summary``, ``az.plot_posterior``,
``az.loo``). Both work for any Pyro guide with a density. ArviZ is needed: ``pip install 'pyroflows[arviz]'``.
"""

from flowcommon.diagnostics import VIDiagnostics, psis, verdict_for

from .arviz import to_inference_data, vi_diagnostics

__all__ = ["VIDiagnostics", "psis", "to_inference_data", "verdict_for", "vi_diagnostics"]
