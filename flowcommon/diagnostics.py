"""Backend-free core of the VI diagnostics: PSIS k̂, importance-weighted bounds, verdicts and ArviZ assembly.

Shared by ``pyroflows.diagnostics`` and ``numpyroflows.diagnostics``; it needs numpy, and ArviZ/xarray only when PSIS
runs or an ``InferenceData`` is built (through :mod:`flowcommon.arviz_compat`, which hides ArviZ 0.x / 1.x). The
PPL-specific modules turn a guide and a model into a :class:`DrawRecord` of numpy arrays; everything after that lives
here once.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import warnings
from typing import Any

import numpy as np

from . import arviz_compat

KHAT_GOOD = 0.5
KHAT_USABLE = 0.7
MIN_DRAWS = 25  # PSIS fits the largest ceil(min(S / 5, 3 sqrt(S))) weights; it needs more than 4 of them
MIN_RELIABLE_DRAWS = 100  # PSIS's minimum sample size 10^(1 / (1 - k)) at k = 0.5 (Vehtari et al. 2024)

VERDICT_GOOD = "good: the approximation is close; importance-weighted estimates are reliable"
VERDICT_USABLE = (
    "usable after PSIS: the approximation is rough; estimate with the PSIS-smoothed weights (or resample=True) "
    "rather than the raw guide draws"
)
VERDICT_UNRELIABLE = (
    "unreliable: the guide misses posterior mass in the tails; do not trust its draws, its ELBO or "
    "importance-weighted estimates; try a richer guide (e.g. a flow), more steps or particles, a start at the "
    "Laplace approximation (AutoFlowGuide(..., warm_start=\"laplace\")), or MCMC"
)
VERDICT_UNRELIABLE_FLOW = (
    "unreliable: the flow guide misses posterior mass in the tails; do not trust its draws, its ELBO or "
    "importance-weighted estimates; try more steps or particles, a start at the Laplace approximation "
    "(warm_start=\"laplace\"), a more expressive flow (more layers, or flow=\"nsf\"), or MCMC"
)


def verdict_for(khat: float, flow_guide: bool = False) -> str:
    """Plain-words reading of a PSIS k̂ (Yao et al. 2018): < 0.5 good, < 0.7 usable after PSIS, else unreliable;
    the advice for an unreliable guide does not suggest a flow to a ``flow_guide``."""
    if khat < KHAT_GOOD:
        return VERDICT_GOOD
    if khat < KHAT_USABLE:
        return VERDICT_USABLE
    return VERDICT_UNRELIABLE_FLOW if flow_guide else VERDICT_UNRELIABLE  # also k̂ = nan or inf


def _constant_tolerance(log_weights: np.ndarray) -> float:
    eps = np.finfo(log_weights.dtype).eps if np.issubdtype(log_weights.dtype, np.floating) else np.finfo(float).eps
    return float(64 * eps * max(1.0, float(np.max(np.abs(log_weights)))))


def psis(log_weights: Any) -> tuple[float, np.ndarray]:
    """Pareto-smoothed importance sampling of one vector of log weights: returns (k̂, normalised smoothed log weights).

    Runs ArviZ's PSIS (relative efficiency 1: guide draws are independent). Constant log weights (equal up to 64
    ulp of their dtype) mean the guide is the posterior: there is no tail to fit (ArviZ would answer k̂ = inf), so
    k̂ = -inf is returned — the limit of a generalised Pareto whose support shrinks to a point — with uniform weights.

    Args:
        log_weights: ``S`` values log p(θ_s, data) - log q(θ_s), ``S >= 25``; -inf entries (draws outside the model's
            support) are allowed, nan and +inf are not.

    Example:
        >>> khat, lw = psis(np.random.default_rng(0).normal(size=1000))

    Paper: Vehtari, Simpson, Gelman, Yao, Gabry (2024), "Pareto smoothed importance sampling", JMLR 25(72).
    """
    raw = np.asarray(log_weights).reshape(-1)
    lw = raw.astype(np.float64)
    num = lw.size
    if num < MIN_DRAWS:
        raise ValueError(f"PSIS needs at least {MIN_DRAWS} draws to fit the tail of the weights, got {num}; "
                         "pass num_samples >= 1000 for a stable k̂")
    bad = np.isnan(lw) | np.isposinf(lw)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{int(bad.sum())} of the {num} log weights are nan or +inf (first at draw {first}): "
                         "log p(θ, data) or log q(θ) is not finite at the guide's draws; check the model's and the "
                         "guide's densities with validation enabled")
    finite = np.isfinite(lw)
    if not finite.any():
        raise ValueError("every guide draw has zero density under the model (all log weights are -inf): the guide "
                         "puts its mass outside the model's support; check the guide's constraints")
    if finite.all() and np.ptp(lw) <= _constant_tolerance(raw):
        return -math.inf, np.full(num, -math.log(num))
    smoothed, khat = arviz_compat.psislw(lw)
    return khat, smoothed


def _logsumexp(x: np.ndarray) -> float:
    top = np.max(x)
    if not np.isfinite(top):
        return float(top)
    return float(top + np.log(np.sum(np.exp(x - top))))


@dataclasses.dataclass(frozen=True, eq=False)
class VIDiagnostics:
    """How well a variational guide q approximates the posterior, read off importance weights p(θ, data) / q(θ).

    With draws θ_s ~ q and log w_s = log p(θ_s, data) - log q(θ_s): ``elbo`` = mean_s log w_s (the evidence lower
    bound), ``iw_elbo`` = logsumexp_s log w_s - log S (the tighter importance-weighted bound; both tend to log p(data)
    as q tends to the posterior), ``khat`` the Pareto shape fitted to the largest weights by PSIS (< 0.5 good, < 0.7
    usable after smoothing, else the guide misses mass; -inf when all weights are equal, i.e. q is the posterior),
    ``ess`` = 1 / Σ_s w̃_s² for the PSIS-smoothed self-normalised weights w̃ (S when q is exact).

    Attributes:
        khat: PSIS Pareto k̂ of the log weights.
        elbo: mean log weight.
        iw_elbo: log of the mean weight.
        ess: effective sample size of the smoothed, self-normalised weights, in [1, S].
        num_samples: S, the number of guide draws.
        log_weights: the S raw log weights (numpy, float64).
        verdict: the reading of ``khat`` in plain words.
        draws: with ``resample=True``, site name -> S draws resampled with the smoothed weights (constrained space),
            approximately from the posterior; else None.

    Example:
        >>> diag = vi_diagnostics(guide, model, data)   # doctest: +SKIP
        >>> print(diag); diag.khat < 0.7                 # doctest: +SKIP

    Paper: Yao, Vehtari, Simpson, Gelman (2018), "Yes, but did it work?: Evaluating variational inference", ICML.
    """

    khat: float
    elbo: float
    iw_elbo: float
    ess: float
    num_samples: int
    log_weights: np.ndarray = dataclasses.field(repr=False)
    verdict: str
    smoothed_log_weights: np.ndarray = dataclasses.field(repr=False)
    draws: dict[str, np.ndarray] | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_log_weights(cls, log_weights: Any, draws: dict[str, np.ndarray] | None = None,
                         flow_guide: bool = False) -> VIDiagnostics:
        """Summarise ``S`` log weights log p(θ_s, data) - log q(θ_s) (see :func:`psis` for what is accepted);
        ``flow_guide``: the weights come from a flow guide (see :func:`verdict_for`)."""
        lw = np.asarray(log_weights, dtype=np.float64).reshape(-1)
        khat, smoothed = psis(log_weights)
        ess = float(1.0 / np.sum(np.exp(2.0 * smoothed)))
        return cls(khat=khat, elbo=float(np.mean(lw)), iw_elbo=_logsumexp(lw) - math.log(lw.size), ess=ess,
                   num_samples=int(lw.size), log_weights=lw, verdict=verdict_for(khat, flow_guide),
                   smoothed_log_weights=smoothed, draws=draws)

    def as_attrs(self) -> dict[str, Any]:
        return {"psis_khat": self.khat, "elbo": self.elbo, "iw_elbo": self.iw_elbo, "ess": self.ess,
                "verdict": self.verdict}

    def __str__(self) -> str:
        rows = [
            ("Pareto k-hat (PSIS)", f"{self.khat:.3f}"),
            ("ELBO", f"{self.elbo:.4f}"),
            ("IW-ELBO", f"{self.iw_elbo:.4f}"),
            ("ESS", f"{self.ess:.1f} of {self.num_samples} ({100 * self.ess / self.num_samples:.1f}%)"),
            ("verdict", self.verdict),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"VI diagnostics from {self.num_samples} guide draws"]
        lines += [f"  {name:<{width}}  {value}" for name, value in rows]
        return "\n".join(lines)


def resample_indices(smoothed_log_weights: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Multinomial resampling: index i is drawn with probability w̃_i, one index per uniform in [0, 1)."""
    cdf = np.cumsum(np.exp(smoothed_log_weights - np.max(smoothed_log_weights)))
    idx = np.searchsorted(cdf, np.asarray(uniforms, dtype=np.float64) * cdf[-1], side="right")
    return np.minimum(idx, cdf.size - 1)


def warn_if_unrepairable(summary: VIDiagnostics, stacklevel: int = 2) -> None:
    """Warn (``UserWarning``) when PSIS resampling cannot repair the guide, k̂ >= 0.7 (or nan): the resampled draws
    then still miss posterior mass. ``stacklevel`` counts from the caller of this function, as for ``warnings.warn``.
    """
    if not summary.khat < KHAT_USABLE:
        warnings.warn(f"PSIS k̂ = {summary.khat:.2f} >= {KHAT_USABLE}: resampling cannot repair this guide, the "
                      "resampled draws are not reliable (they still miss posterior mass); "
                      + summary.verdict.split("; ", 2)[-1], stacklevel=stacklevel + 1)


def check_resample_count(num: int, arg: str, stacklevel: int = 2) -> None:
    """Refuse fewer than 25 draws for PSIS resampling (the tail fit needs them) and warn (``UserWarning``) below
    :data:`MIN_RELIABLE_DRAWS`, where k̂ is too noisy to judge the guide; ``arg`` names the caller's argument,
    ``stacklevel`` counts from the caller of this function."""
    if num < MIN_DRAWS:
        raise ValueError(f"PSIS needs at least {MIN_DRAWS} draws to fit the tail of the weights, got {arg}; ask for "
                         f"{MIN_RELIABLE_DRAWS} draws or more (1000 for a stable k̂)")
    if num < MIN_RELIABLE_DRAWS:
        warnings.warn(f"PSIS on only {num} draws ({arg}): k̂ is unreliable below {MIN_RELIABLE_DRAWS} draws and may "
                      "miss a bad guide; ask for 1000 draws or more", stacklevel=stacklevel + 1)


# ----------------------------------------------------------------------------------------------- InferenceData


@dataclasses.dataclass
class Site:
    """What the diagnostics need to know about one model site: kind, its shape for one draw, and its dim names."""

    name: str
    kind: str  # "latent", "deterministic" or "observed"
    shape: tuple[int, ...]
    dims: list[str]
    batch_shape: tuple[int, ...] = ()  # for observed sites: the shape of the pointwise log-likelihood
    batch_dims: list[str] = dataclasses.field(default_factory=list)  # ... and its dim names


def site_dims(name: str, shape: tuple[int, ...], batch_ndim: int, plates: dict[int, tuple[str, int]]
              ) -> list[str]:
    """Dim names for a site's axes: a batch axis lying in a plate (same position from the right, same size) takes
    the plate's name, every other axis ``<site>_dim_<k>`` (k its position, as ArviZ names it)."""
    dims = []
    ndim = len(shape)
    for axis, size in enumerate(shape):
        pos = axis - batch_ndim  # negative position among the batch axes (Pyro/NumPyro plate ``dim``)
        plate = plates.get(pos) if axis < batch_ndim else None
        dims.append(plate[0] if plate is not None and plate[1] == size else f"{name}_dim_{axis}")
    assert len(dims) == ndim
    return dims


@dataclasses.dataclass
class DrawRecord:
    """Per-draw results of running the guide and the model on ``S`` guide draws (numpy arrays, draws first)."""

    log_p: np.ndarray
    log_q: np.ndarray
    sites: dict[str, Site]
    values: dict[str, np.ndarray]  # latent and deterministic sites: (S, *shape)
    observed: dict[str, np.ndarray]  # observed sites: (*shape)
    log_lik: dict[str, np.ndarray]  # observed sites: (S, *batch_shape)
    predictive: dict[str, np.ndarray] | None  # observed sites redrawn: (S, *shape)

    @property
    def log_weights(self) -> np.ndarray:
        return self.log_p - self.log_q

    def take(self, idx: np.ndarray) -> DrawRecord:
        """The record of draws ``idx`` (e.g. resampled indices), in that order."""
        pick = lambda arrays: None if arrays is None else {k: v[idx] for k, v in arrays.items()}  # noqa: E731
        return DrawRecord(self.log_p[idx], self.log_q[idx], self.sites, pick(self.values), self.observed,
                          pick(self.log_lik), pick(self.predictive))


def _dataset(arrays: dict[str, np.ndarray], dims: dict[str, list[str]], lead: list[str], attrs: dict[str, Any]):
    import xarray as xr

    data_vars, coords = {}, {}
    for name, value in arrays.items():
        value = np.asarray(value)
        names = lead + dims[name]
        for dim, size in zip(names, value.shape):
            if dim in coords and coords[dim].size != size:
                raise ValueError(f"dim {dim!r} has size {coords[dim].size} at one site and {size} at site {name!r}; "
                                 "give plates of different sizes different names")
            coords[dim] = np.arange(size)
        data_vars[name] = (names, value)
    return xr.Dataset(data_vars, coords=coords, attrs=dict(attrs))


def build_inference_data(record: DrawRecord, summary: VIDiagnostics, *, num_chains: int, posterior_predictive: bool,
                         log_likelihood: bool, library: str, library_version: str, package: str,
                         package_version: str, resample_uniforms: np.ndarray | None = None):
    """Assemble an ArviZ container from a :class:`DrawRecord` (see ``to_inference_data`` for the groups):
    ``arviz.InferenceData`` under ArviZ 0.x, ``xarray.DataTree`` under 1.x. With ``resample_uniforms`` (S uniforms
    in [0, 1)) every group holds the draws resampled with the PSIS-smoothed weights (sampling-importance-resampling,
    attrs ``draws="psis_resampled"``); otherwise the guide's own draws (``draws="guide"``)."""
    az = arviz_compat.arviz()
    draws = "guide"
    if resample_uniforms is not None:
        warn_if_unrepairable(summary, stacklevel=3)
        record = record.take(resample_indices(summary.smoothed_log_weights, resample_uniforms))
        draws = "psis_resampled"
    num = record.log_p.shape[0]
    per_chain = num // num_chains

    def chains(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        return x.reshape((num_chains, per_chain) + x.shape[1:])

    attrs = {"created_at": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
             "arviz_version": az.__version__, "inference_library": library,
             "inference_library_version": library_version, f"{package}_version": package_version,
             "draws": draws, **summary.as_attrs()}
    lead = ["chain", "draw"]
    dims = {name: site.dims for name, site in record.sites.items()}
    groups = {
        "posterior": _dataset({k: chains(v) for k, v in record.values.items()}, dims, lead, attrs),
        "sample_stats": _dataset({"log_p": chains(record.log_p), "log_q": chains(record.log_q),
                                  "log_weight": chains(record.log_weights)}, {"log_p": [], "log_q": [],
                                                                              "log_weight": []}, lead, attrs),
    }
    if record.observed:
        groups["observed_data"] = _dataset(record.observed, dims, [], attrs)
        if log_likelihood:
            batch_dims = {name: record.sites[name].batch_dims for name in record.log_lik}
            groups["log_likelihood"] = _dataset({k: chains(v) for k, v in record.log_lik.items()}, batch_dims,
                                                lead, attrs)
        if posterior_predictive and record.predictive is not None:
            groups["posterior_predictive"] = _dataset({k: chains(v) for k, v in record.predictive.items()}, dims,
                                                      lead, attrs)
    return arviz_compat.inference_data(groups, attrs)


def check_counts(num_samples: int, num_chains: int) -> None:
    if num_chains < 1 or num_samples % num_chains:
        raise ValueError(f"num_samples={num_samples} must split evenly into num_chains={num_chains} chains; pass a "
                         "num_samples that is a multiple of num_chains")
    if num_samples < MIN_DRAWS:
        raise ValueError(f"PSIS needs at least {MIN_DRAWS} draws to fit the tail of the weights, got "
                         f"num_samples={num_samples}; pass num_samples >= 1000 for a stable k̂")
