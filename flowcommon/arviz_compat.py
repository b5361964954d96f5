"""The one place where ArviZ 0.x and ArviZ 1.x differ for this project: import, PSIS, the data container, plots.

ArviZ 0.x (``arviz`` <= 0.23, Python 3.10+) holds a fit in ``arviz.InferenceData`` and exposes ``arviz.psislw``.
ArviZ 1.x (the ``arviz`` meta-package over ``arviz-base``, ``arviz-stats`` and ``arviz-plots``; what Python >= 3.12
installs) holds it in ``xarray.DataTree`` and runs PSIS through the ``.azstats`` accessor of an ``xarray.DataArray``,
whose input is the *negated* log ratios (it is written for PSIS-LOO, where the ratios are 1 / p(y_i | θ)). Every other
module calls the functions below and never branches on the version itself.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

_INSTALL_HINT = "the diagnostics need ArviZ: pip install 'pyroflows[arviz]' (or pip install arviz)"


def arviz():
    """``import arviz``, without ArviZ 0.x's "undergoing a major refactor" ``FutureWarning`` (a user of this library
    did not choose the ArviZ version and cannot act on it)."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="ArviZ is undergoing", category=FutureWarning)
            import arviz as az
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL_HINT) from err
    return az


def major() -> int:
    """The installed ArviZ's major version (0 or 1)."""
    return int(str(arviz().__version__).split(".")[0])


def psislw(log_weights: np.ndarray) -> tuple[np.ndarray, float]:
    """PSIS of one vector of log importance ratios (relative efficiency 1: independent draws), by ArviZ.

    Returns (smoothed log weights normalised to sum to one, Pareto k̂), the same contract in both majors.
    """
    lw = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    az = arviz()
    if major() == 0:
        smoothed, khat = az.psislw(lw, reff=1.0)
        return np.asarray(smoothed, dtype=np.float64), float(khat)
    import xarray as xr

    negated = xr.DataArray(-lw, dims=["__sample__"])  # arviz-stats smooths the ratios exp(-input)
    smoothed, khat = negated.azstats.psislw(dim="__sample__", r_eff=1.0)
    return np.asarray(smoothed.values, dtype=np.float64), float(khat.values)


def inference_data(groups: dict[str, Any], attrs: dict[str, Any]):
    """A fit's container from its groups (``xarray.Dataset`` per group name): ``arviz.InferenceData`` under ArviZ
    0.x, ``xarray.DataTree`` under 1.x. Either is accepted by that version's ``summary``, ``loo`` and plots, and
    both read the same way: ``data.posterior["mu"]``, ``data.attrs``, ``data["log_likelihood"]``."""
    az = arviz()
    if major() == 0:
        return az.InferenceData(attrs=dict(attrs), **groups)
    import xarray as xr

    tree = xr.DataTree.from_dict({f"/{name}": ds for name, ds in groups.items()})
    tree.attrs = dict(attrs)
    return tree


def from_draws(draws: dict[str, np.ndarray], attrs: dict[str, Any] | None = None):
    """A container with one ``posterior`` group from arrays of shape (chain, draw, ...), e.g. reference MCMC draws."""
    az = arviz()
    if major() == 0:
        return az.from_dict(posterior=draws, attrs=attrs or {})
    return az.from_dict({"posterior": draws}, attrs=attrs or {})


def plot_posterior(data: Any, var_names: list[str] | None = None):
    """Marginal posterior densities: ``az.plot_posterior`` in ArviZ 0.x, its successor ``az.plot_dist`` in 1.x."""
    az = arviz()
    if major() == 0:
        return az.plot_posterior(data, var_names=var_names)
    return az.plot_dist(data, var_names=var_names)


def group_names(data: Any) -> list[str]:
    """The group names of an ``InferenceData`` (``data.groups()``) or a ``DataTree`` (its children)."""
    if hasattr(data, "children"):
        return list(data.children)
    return list(data.groups())


def plot_forest(models: dict[str, Any], path: str, var_names: list[str] | None = None, ci_prob: float = 0.9,
                title: str | None = None) -> None:
    """Forest plot comparing several fits (name -> container), combined chains, central ``ci_prob`` intervals,
    written to ``path``. ArviZ 0.x draws HDIs with ``model_names``; 1.x draws equal-tailed intervals per model."""
    az = arviz()
    import matplotlib.pyplot as plt

    if major() == 0:
        axes = az.plot_forest(list(models.values()), model_names=list(models), var_names=var_names, combined=True,
                              hdi_prob=ci_prob, figsize=(7, 7))
        if title:
            axes[0].set_title(title)
        plt.savefig(path, dpi=110, bbox_inches="tight")
    else:
        plots = az.plot_forest(dict(models), var_names=var_names, combined=True, ci_probs=(0.5, ci_prob))
        plots.add_legend("model")
        if title:
            plots.add_title(title)
        plots.savefig(path, dpi=110, bbox_inches="tight")
    plt.close("all")
