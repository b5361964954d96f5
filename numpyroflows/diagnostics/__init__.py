"""Diagnostics for variational inference: PSIS k̂, importance-weighted bounds and ArviZ ``InferenceData``.

``vi_diagnostics(guide, model, *args, params=...)`` says, in numbers and in words, whether a guide can be trusted (Yao
et al. 2018, "Yes, but Did It Work?: Evaluating Variational Inference"): the Pareto k̂ of its importance weights, the
ELBO and importance-weighted bound, the effective sample size. ``to_inference_data(guide, model, *args, params=...)``
hands its draws to ArviZ (``az.summary``, ``az.plot_posterior``, ``az.loo``). Both work for any NumPyro guide with a
density, ``params`` being the trained values (``svi_result.params``). ArviZ is needed:
``pip install 'pyroflows[arviz]'``. The verdicts and thresholds are shared with pyroflows
(:mod:`flowcommon.diagnostics`).
"""

from flowcommon.diagnostics import VIDiagnostics, psis, verdict_for

from .arviz import to_inference_data, vi_diagnostics

__all__ = ["VIDiagnostics", "psis", "to_inference_data", "verdict_for", "vi_diagnostics"]
