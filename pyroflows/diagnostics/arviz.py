"""VI diagnostics and ArviZ conversion for any Pyro guide: PSIS k̂, ELBO / IW-ELBO, ESS, ``InferenceData``.

Both functions draw θ_s ~ q from the guide, replay the model on each draw and take the importance weights
log w_s = log p(θ_s, data) - log q(θ_s) from the two traces (``model_trace.log_prob_sum() - guide_trace.log_prob_sum()``
per draw). For ``AutoContinuous`` guides (AutoMultivariateNormal, AutoIAFNormal, ...) the guide trace holds the
auxiliary latent's density and the ``Delta`` sites' log|det| of the map to the constrained space, so the difference is
the exact log weight for the constrained θ. Draws are evaluated at once inside an outer
``pyro.plate("_num_draws", S, dim=-(max_plate_nesting + 1))`` (as ``vectorize_particles`` does); a model that cannot be
vectorised is evaluated one draw at a time, with a warning.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

from flowcommon.diagnostics import (
    DrawRecord,
    Site,
    VIDiagnostics,
    build_inference_data,
    check_counts,
    resample_indices,
    site_dims,
)

_DRAWS_PLATE = "_num_draws"
_PROBE_DRAWS = 3  # draws of the vectorisation probe (not 1: a size-1 draws dim would hide a wrong broadcast)


class _NotVectorisable(Exception):
    pass


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _plates(site: dict) -> dict[int, tuple[str, int]]:
    return {f.dim: (f.name, int(f.size)) for f in site["cond_indep_stack"]
            if f.dim is not None and f.name != _DRAWS_PLATE}


def _is_deterministic(site: dict) -> bool:
    return bool(site["infer"].get("_deterministic", False))


def _is_latent(site: dict) -> bool:
    return site["type"] == "sample" and not site["is_observed"]


def _base(d: Any) -> Any:
    while hasattr(d, "base_dist"):
        d = d.base_dist
    return d


class _Uncondition(pyro.poutine.messenger.Messenger):
    """Redraw observed sites from their distributions (``poutine.uncondition`` would also redraw the ``Delta`` of a
    ``pyro.deterministic`` site, breaking its shape inside plates)."""

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] and not _is_deterministic(msg):
            msg["is_observed"] = False
            msg["value"] = None
            msg["done"] = False


def _single_traces(guide: Callable, model: Callable, args: tuple, kwargs: dict):
    guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    return guide_tr, model_tr


def _check(guide_tr, model_tr) -> None:
    for tr in (model_tr, guide_tr):
        for name, site in tr.nodes.items():
            if site_is_subsample(site):
                fn = site["fn"]
                if fn.subsample_size is not None and fn.subsample_size < fn.size:
                    raise ValueError(f"plate {name!r} subsamples {fn.subsample_size} of {fn.size}: the log weights "
                                     "need log p(θ, data) on the full data set; run the diagnostics with the full "
                                     "data (subsample_size=None)")
    guide_tr, model_tr = prune_subsample_sites(guide_tr), prune_subsample_sites(model_tr)
    missing = [name for name, site in model_tr.nodes.items() if _is_latent(site) and name not in guide_tr.nodes]
    if missing:
        raise ValueError(f"the guide does not sample the model's latent site(s) {missing}; every latent site must be "
                         "drawn by the guide (enumerated discrete sites cannot be diagnosed: sample them in the guide)")
    has_aux = any(site["type"] == "sample" and site["infer"].get("is_auxiliary") for site in guide_tr.nodes.values())
    point_masses = [name for name, site in guide_tr.nodes.items()
                    if _is_latent(site) and isinstance(_base(site["fn"]), dist.Delta)]
    if point_masses and not has_aux:
        raise ValueError(f"the guide is a point mass at {point_masses} (e.g. AutoDelta, MAP): it has no density, so "
                         "importance weights and k̂ are undefined; diagnose a guide with a density (AutoNormal, "
                         "AutoMultivariateNormal, a flow guide)")


def _site_table(model_tr) -> dict[str, Site]:
    sites = {}
    for name, site in prune_subsample_sites(model_tr).nodes.items():
        if site["type"] != "sample":
            continue
        shape = tuple(site["value"].shape)
        plates = _plates(site)
        if _is_deterministic(site):
            sites[name] = Site(name, "deterministic", shape, site_dims(name, shape, len(shape), plates))
            continue
        batch_ndim = len(shape) - site["fn"].event_dim
        dims = site_dims(name, shape, batch_ndim, plates)
        kind = "observed" if site["is_observed"] else "latent"
        batch_shape = tuple(site["fn"].batch_shape)
        sites[name] = Site(name, kind, shape, dims, batch_shape, site_dims(name, batch_shape, len(batch_shape), plates))
    return sites


def _max_plate_nesting(*traces) -> int:
    """How many batch dims the plates of the traces use (the draws plate goes left of them)."""
    dims = [f.dim for tr in traces for site in prune_subsample_sites(tr).nodes.values()
            if site["type"] == "sample" for f in site["cond_indep_stack"] if f.dim is not None]
    return -min(dims) if dims else 0


def _pointwise(site: dict) -> torch.Tensor:
    return scale_and_mask(site["fn"].log_prob(site["value"]), 1.0, site["mask"])


# ------------------------------------------------------------------------------------------------ vectorised


def _per_draw_sum(t: Any, num: int, nest: int) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.dim() > nest + 1 or (t.dim() == nest + 1 and t.shape[0] not in (1, num)):
        raise _NotVectorisable(f"a log-density of shape {tuple(t.shape)} has no draws dim")
    if t.dim() < nest + 1 or t.shape[0] == 1:
        return t.sum().expand(num)  # the same for every draw
    return t.movedim(-(nest + 1), 0).reshape(num, -1).sum(1)


def _total(terms: list[torch.Tensor], num: int) -> torch.Tensor:
    return sum(terms[1:], terms[0]) if terms else torch.zeros(num)


def _per_draw_value(v: torch.Tensor, num: int, nest: int, shape: tuple[int, ...], event_dims: list[int]
                    ) -> torch.Tensor:
    """Find the draws axis of a vectorised value and return it as (S, *shape) (its shape for one draw)."""
    size = math.prod(shape)
    for k in event_dims:
        pos = -(nest + 1 + k)
        if v.dim() >= -pos and v.shape[pos] == num:
            moved = v.movedim(pos, 0)
            if moved[0].numel() == size and tuple(moved.shape[moved.dim() - k:]) == tuple(shape[len(shape) - k:]):
                return moved.reshape((num,) + shape)
    if v.numel() == size:  # does not depend on the draw
        return v.reshape(shape).expand((num,) + shape)
    raise _NotVectorisable(f"a value of shape {tuple(v.shape)} has no draws dim for a site of shape {shape}")


def _with_draws_plate(fn: Callable, num: int, nest: int) -> Callable:
    def wrapped(*args, **kwargs):
        with pyro.plate(_DRAWS_PLATE, num, dim=-(nest + 1)):
            return fn(*args, **kwargs)

    return wrapped


def _evaluate_vectorised(guide, model, args, kwargs, num, nest, sites, predictive) -> DrawRecord:
    guide_tr = poutine.trace(_with_draws_plate(guide, num, nest)).get_trace(*args, **kwargs)
    model_tr = poutine.trace(poutine.replay(_with_draws_plate(model, num, nest), trace=guide_tr)).get_trace(
        *args, **kwargs)
    guide_tr, model_tr = prune_subsample_sites(guide_tr), prune_subsample_sites(model_tr)
    guide_tr.compute_log_prob()
    model_tr.compute_log_prob()
    log_q = _total([_per_draw_sum(s["log_prob"], num, nest) for s in guide_tr.nodes.values() if s["type"] == "sample"],
                   num)
    log_p = _total([_per_draw_sum(s["log_prob"], num, nest) for s in model_tr.nodes.values() if s["type"] == "sample"],
                   num)
    if set(sites) != {n for n, s in model_tr.nodes.items() if s["type"] == "sample"}:
        raise _NotVectorisable("the model's sites change under vectorisation")
    values, log_lik, observed = {}, {}, {}
    for name, info in sites.items():
        site = model_tr.nodes[name]
        if info.kind == "observed":
            observed[name] = _numpy(site["value"]).reshape(info.shape)
            log_lik[name] = _numpy(_per_draw_value(_pointwise(site), num, nest, info.batch_shape, [0]))
        else:
            event_dims = [site["fn"].event_dim] if info.kind == "latent" else list(range(len(info.shape) + 1))
            values[name] = _numpy(_per_draw_value(site["value"], num, nest, info.shape, event_dims))
    ppc = None
    if predictive and observed:
        tr = poutine.trace(poutine.replay(_with_draws_plate(_Uncondition()(model), num, nest),
                                          trace=guide_tr)).get_trace(*args, **kwargs)
        ppc = {name: _numpy(_per_draw_value(tr.nodes[name]["value"], num, nest, sites[name].shape,
                                            [tr.nodes[name]["fn"].event_dim])) for name in observed}
    return DrawRecord(_numpy(log_p), _numpy(log_q), sites, values, observed, log_lik, ppc)


# ------------------------------------------------------------------------------------------------ one at a time


def _evaluate_loop(guide, model, args, kwargs, num, sites, predictive) -> DrawRecord:
    log_p, log_q = [], []
    values = {n: [] for n, s in sites.items() if s.kind != "observed"}
    log_lik = {n: [] for n, s in sites.items() if s.kind == "observed"}
    ppc = {n: [] for n in log_lik} if predictive else None
    observed = {}
    for _ in range(num):
        guide_tr, model_tr = _single_traces(guide, model, args, kwargs)
        guide_tr, model_tr = prune_subsample_sites(guide_tr), prune_subsample_sites(model_tr)
        names = {n for n, s in model_tr.nodes.items() if s["type"] == "sample"}
        if names != set(sites):
            raise ValueError(f"the model's sample sites change from draw to draw ({sorted(names ^ set(sites))}); "
                             "the diagnostics need a model with a fixed set of sites")
        log_q.append(torch.as_tensor(guide_tr.log_prob_sum()))
        log_p.append(torch.as_tensor(model_tr.log_prob_sum()))
        for name in values:
            values[name].append(_numpy(model_tr.nodes[name]["value"]).reshape(sites[name].shape))
        for name in log_lik:
            site = model_tr.nodes[name]
            observed[name] = _numpy(site["value"]).reshape(sites[name].shape)
            log_lik[name].append(_numpy(_pointwise(site)).reshape(sites[name].batch_shape))
        if ppc is not None:
            tr = poutine.trace(poutine.replay(_Uncondition()(model), trace=guide_tr)).get_trace(*args, **kwargs)
            for name in ppc:
                ppc[name].append(_numpy(tr.nodes[name]["value"]).reshape(sites[name].shape))
    stack = lambda d: {k: np.stack(v) for k, v in d.items()}  # noqa: E731
    return DrawRecord(_numpy(torch.stack(log_p)), _numpy(torch.stack(log_q)), sites, stack(values), observed,
                      stack(log_lik),
                      None if ppc is None or not ppc else stack(ppc))


def _evaluate(guide, model, args, kwargs, num: int, predictive: bool) -> DrawRecord:
    with torch.no_grad():
        guide_tr, model_tr = _single_traces(guide, model, args, kwargs)  # also sets up lazy autoguides
        _check(guide_tr, model_tr)
        sites = _site_table(model_tr)
        nest = _max_plate_nesting(guide_tr, model_tr)
        try:
            # a probe on a few draws first: a model whose batch dims are not aligned to its plates broadcasts the draws
            # against each other (an S x S x ... tensor), which the shape checks reject, but only after it has been
            # allocated; on _PROBE_DRAWS draws that costs nothing, on all of them it can exhaust the memory
            _evaluate_vectorised(guide, model, args, kwargs, min(num, _PROBE_DRAWS), nest, sites, False)
            return _evaluate_vectorised(guide, model, args, kwargs, num, nest, sites, predictive)
        except Exception as err:  # any failure of the vectorised pass: fall back to the exact loop
            msg = str(err).splitlines()[0] if str(err) else ""
            warnings.warn(f"the model or guide could not be evaluated on {num} draws at once ({type(err).__name__}: "
                          f"{msg}); evaluating one draw at a time (slower). Write the model with pyro.plate and "
                          "broadcasting to vectorise it.", stacklevel=3)
            return _evaluate_loop(guide, model, args, kwargs, num, sites, predictive)


def _uniforms(num: int) -> np.ndarray:
    return _numpy(torch.rand(num, dtype=torch.float64))


def _is_flow_guide(guide: Any) -> bool:
    """Whether the guide is already a normalizing flow (ours, or Pyro's AutoNormalizingFlow family)."""
    from pyro.infer.autoguide import AutoNormalizingFlow

    from ..infer.autoguide import AutoFlowGuide

    return isinstance(guide, (AutoFlowGuide, AutoNormalizingFlow))


# ------------------------------------------------------------------------------------------------ public API


def vi_diagnostics(guide: Callable, model: Callable, *args: Any, num_samples: int = 1000, resample: bool = False,
                   **kwargs: Any) -> VIDiagnostics:
    """Pareto k̂, ELBO, IW-ELBO and ESS of a Pyro guide's importance weights against its model.

    Draws θ_s ~ q (s = 1..S) from the guide, replays the model on them and computes
    log w_s = log p(θ_s, data) - log q(θ_s); PSIS fits a generalised Pareto to the largest weights, whose shape k̂
    says whether q covers the posterior (< 0.5 good, < 0.7 usable after smoothing, else unreliable). Works for any
    guide: AutoNormal, AutoMultivariateNormal, AutoIAFNormal, flow guides, hand-written guides with a density (not
    point masses such as AutoDelta). The model must not subsample; its latent sites must all be drawn by the guide.

    Args:
        guide: the guide, called as ``guide(*args, **kwargs)`` with its current parameters (the param store).
        model: the model, called like the guide.
        *args: the model's arguments, as for SVI.
        num_samples: S, the number of guide draws (at least 25; 1000 or more for a stable k̂).
        resample: also return ``draws``: S draws per latent/deterministic site resampled with the PSIS-smoothed
            weights (sampling-importance-resampling), closer to the posterior than the raw guide draws.
        **kwargs: the model's keyword arguments.

    Returns:
        A :class:`VIDiagnostics` (``print`` it for a table). k̂ = -inf means all weights are equal: q is the posterior.

    Example:
        >>> guide = pyro.infer.autoguide.AutoNormal(model)     # doctest: +SKIP
        >>> ...  # fit with SVI
        >>> print(vi_diagnostics(guide, model, data))           # doctest: +SKIP

    Paper: Yao, Vehtari, Simpson, Gelman (2018), "Yes, but did it work?: Evaluating variational inference", ICML.
    """
    check_counts(num_samples, 1)
    record = _evaluate(guide, model, args, kwargs, num_samples, predictive=False)
    summary = VIDiagnostics.from_log_weights(record.log_weights, flow_guide=_is_flow_guide(guide))
    if not resample:
        return summary
    idx = resample_indices(summary.smoothed_log_weights, _uniforms(num_samples))
    draws = {name: value[idx] for name, value in record.values.items()}
    return dataclasses.replace(summary, draws=draws)


def to_inference_data(guide: Callable, model: Callable, *args: Any, num_samples: int = 1000, num_chains: int = 1,
                      posterior_predictive: bool = False, log_likelihood: bool = True, psis: bool = False,
                      **kwargs: Any):
    """An ArviZ container of S guide draws, with PSIS k̂, ELBO and IW-ELBO in its attrs: an ``arviz.InferenceData``
    under ArviZ 0.x, an ``xarray.DataTree`` under ArviZ 1.x (each accepted by that version's ``summary``, ``loo`` and
    plots).

    Draws θ_s ~ q from the guide and replays the model on them (see :func:`vi_diagnostics` for the weights
    log w_s = log p(θ_s, data) - log q(θ_s)). Groups: ``posterior`` (every latent site in its constrained space and
    every ``pyro.deterministic`` site, shape (chain, draw, *site shape); the S draws are split into ``num_chains``
    independent chains), ``sample_stats`` (``log_p``, ``log_q``, ``log_weight`` per draw), ``observed_data``,
    ``log_likelihood`` (pointwise per observed site, so ``az.loo`` works) and, if asked, ``posterior_predictive``
    (every observed site redrawn jointly from the model at each draw). An axis lying in a ``pyro.plate`` is named
    after the plate (coords 0..n-1); other axes ``<site>_dim_<k>``. Attrs: ``psis_khat``, ``elbo``, ``iw_elbo``,
    ``ess``, ``verdict``, ``draws`` (``"guide"`` or ``"psis_resampled"``), ``inference_library`` (+ ``_version``),
    ``pyroflows_version``, ``created_at``.

    The draws come from the guide q, not the posterior: ``az.loo`` treats them as posterior draws. Pass ``psis=True``
    to resample them with the PSIS-smoothed weights first (sampling-importance-resampling; sound when k̂ < 0.7), or,
    under ArviZ 1.x, call ``az.loo_approximate_posterior(data, data.sample_stats["log_p"],
    data.sample_stats["log_q"])``, which corrects PSIS-LOO for the guide (Magnusson et al. 2019).

    Args:
        guide: the guide, called as ``guide(*args, **kwargs)`` with its current parameters.
        model: the model, called like the guide.
        *args: the model's arguments, as for SVI.
        num_samples: total number of draws S (at least 25), a multiple of ``num_chains``.
        num_chains: how many chains to split the independent draws into (ArviZ's R-hat then compares them).
        posterior_predictive: add a ``posterior_predictive`` group.
        log_likelihood: add the ``log_likelihood`` group.
        psis: resample every group's draws with the PSIS-smoothed weights (warns when k̂ >= 0.7, where resampling
            cannot repair the guide).
        **kwargs: the model's keyword arguments.

    Example:
        >>> idata = to_inference_data(guide, model, data, num_chains=4)   # doctest: +SKIP
        >>> az.summary(idata); az.loo(idata); idata.attrs["psis_khat"]     # doctest: +SKIP

    Paper: Yao, Vehtari, Simpson, Gelman (2018), "Yes, but did it work?: Evaluating variational inference", ICML.
    """
    check_counts(num_samples, num_chains)
    record = _evaluate(guide, model, args, kwargs, num_samples, predictive=posterior_predictive)
    summary = VIDiagnostics.from_log_weights(record.log_weights, flow_guide=_is_flow_guide(guide))
    uniforms = _uniforms(num_samples) if psis else None
    import pyroflows

    return build_inference_data(record, summary, num_chains=num_chains, posterior_predictive=posterior_predictive,
                                log_likelihood=log_likelihood, library="pyro", library_version=pyro.__version__,
                                package="pyroflows", package_version=pyroflows.__version__,
                                resample_uniforms=uniforms)
