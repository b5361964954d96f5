"""VI diagnostics and ArviZ conversion for any NumPyro guide: PSIS k̂, ELBO / IW-ELBO, ESS, ``InferenceData``.

Each draw runs the guide under ``seed`` + ``substitute(params)``, replays the model on the guide's trace and takes
``log w = log p(θ, data) - log q(θ)`` as the sums of the two traces' site log-densities (scaled, masked; with the
guide's ``intermediates`` where a transformed distribution kept them). For ``AutoContinuous`` guides the guide trace
holds the auxiliary latent's density and the ``Delta`` sites' log|det|, so the difference is the exact log weight for
the constrained θ. Draws are evaluated with ``jax.vmap`` over keys; a model that cannot be vmapped is evaluated one draw
at a time, with a warning.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.primitives import Messenger

from flowcommon.diagnostics import (
    DrawRecord,
    Site,
    VIDiagnostics,
    build_inference_data,
    check_counts,
    resample_indices,
    site_dims,
)


class _Uncondition(Messenger):
    """Redraw observed sample sites from their distributions (NumPyro has no ``uncondition`` handler)."""

    def process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["is_observed"]:
            msg["is_observed"] = False
            msg["value"] = None


def _plates(site: dict) -> dict[int, tuple[str, int]]:
    return {f.dim: (f.name, int(f.size)) for f in site.get("cond_indep_stack", ()) if f.dim is not None}


def _is_latent(site: dict) -> bool:
    return site["type"] == "sample" and not site["is_observed"]


def _base(d: Any) -> Any:
    while hasattr(d, "base_dist"):
        d = d.base_dist
    return d


def _log_prob(site: dict, scaled: bool = True):
    fn, value = site["fn"], site["value"]
    log_prob = fn.log_prob(value, site["intermediates"]) if site.get("intermediates") else fn.log_prob(value)
    if scaled and site.get("scale") is not None:
        log_prob = site["scale"] * log_prob
    return log_prob


def _traces(guide, model, args, kwargs, params, key):
    key_guide, key_model = jax.random.split(key)
    guide_tr = trace(seed(substitute(guide, data=params), key_guide)).get_trace(*args, **kwargs)
    model_tr = trace(seed(replay(substitute(model, data=params), guide_tr), key_model)).get_trace(*args, **kwargs)
    return guide_tr, model_tr


def _check(guide_tr, model_tr, params: dict) -> None:
    for name, site in model_tr.items():
        if site["type"] == "plate":
            size, subsample_size = site["args"]
            if subsample_size is not None and subsample_size < size:
                raise ValueError(f"plate {name!r} subsamples {subsample_size} of {size}: the log weights need "
                                 "log p(θ, data) on the full data set; run the diagnostics with the full data "
                                 "(subsample_size=None)")
    missing = [n for n, s in model_tr.items()
               if _is_latent(s) and (n not in guide_tr or guide_tr[n]["type"] != "sample")]
    if missing:
        raise ValueError(f"the guide does not sample the model's latent site(s) {missing}; every latent site must be "
                         "drawn by the guide (enumerated discrete sites cannot be diagnosed: sample them in the guide)")
    has_aux = any(s["type"] == "sample" and s["infer"].get("is_auxiliary") for s in guide_tr.values())
    point_masses = [n for n, s in guide_tr.items() if _is_latent(s) and isinstance(_base(s["fn"]), dist.Delta)]
    if point_masses and not has_aux:
        raise ValueError(f"the guide is a point mass at {point_masses} (e.g. AutoDelta, MAP): it has no density, so "
                         "importance weights and k̂ are undefined; diagnose a guide with a density (AutoNormal, "
                         "AutoMultivariateNormal, a flow guide)")
    unset = sorted(n for tr in (guide_tr, model_tr) for n, s in tr.items() if s["type"] == "param" and n not in params)
    if unset:
        warnings.warn(f"params has no value for the parameter(s) {unset}: they were used at their initial values; "
                      "pass params=svi.get_params(state) (or svi_result.params)", stacklevel=4)


def _site_table(model_tr) -> dict[str, Site]:
    sites = {}
    for name, site in model_tr.items():
        if site["type"] == "deterministic":
            shape = tuple(jnp.shape(site["value"]))
            sites[name] = Site(name, "deterministic", shape, site_dims(name, shape, len(shape), _plates(site)))
        elif site["type"] == "sample":
            shape = tuple(jnp.shape(site["value"]))
            plates = _plates(site)
            dims = site_dims(name, shape, len(shape) - site["fn"].event_dim, plates)
            if site["is_observed"]:
                batch_shape = tuple(jnp.shape(_log_prob(site, scaled=False)))
                sites[name] = Site(name, "observed", shape, dims, batch_shape,
                                   site_dims(name, batch_shape, len(batch_shape), plates))
            else:
                sites[name] = Site(name, "latent", shape, dims)
    return sites


def _one_draw(guide, model, sites, predictive):
    observed = [n for n, s in sites.items() if s.kind == "observed"]
    kept = [n for n, s in sites.items() if s.kind != "observed"]

    def one(key, args, kwargs, params):
        key_draw, key_pred = jax.random.split(key)
        guide_tr, model_tr = _traces(guide, model, args, kwargs, params, key_draw)
        log_q = sum((jnp.sum(_log_prob(s)) for s in guide_tr.values() if s["type"] == "sample"), jnp.zeros(()))
        log_p = sum((jnp.sum(_log_prob(s)) for s in model_tr.values() if s["type"] == "sample"), jnp.zeros(()))
        values = {n: model_tr[n]["value"] for n in kept}
        log_lik = {n: _log_prob(model_tr[n], scaled=False) for n in observed}
        ppc = {}
        if predictive and observed:
            unconditioned = _Uncondition(substitute(model, data=params))
            pred_tr = trace(seed(replay(unconditioned, guide_tr), key_pred)).get_trace(*args, **kwargs)
            ppc = {n: pred_tr[n]["value"] for n in observed}
        obs = {n: model_tr[n]["value"] for n in observed}
        return jnp.asarray(log_p), jnp.asarray(log_q), values, log_lik, ppc, obs

    return one


_OUT_AXES = (0, 0, 0, 0, 0, None)  # the observed data are the same for every draw


def _structure(guide, model, args, kwargs, params, key) -> dict:
    """Check the guide/model pair and read the model's sites, by abstract evaluation (no compilation) when the
    model can be traced, else by one concrete run."""
    if getattr(guide, "prototype_trace", False) is None:  # an autoguide not yet set up: set it up concretely
        seed(substitute(guide, data=params), key)(*args, **kwargs)
    box: dict = {}

    def run(key):
        guide_tr, model_tr = _traces(guide, model, args, kwargs, params, key)
        try:
            _check(guide_tr, model_tr, params)
        except ValueError as err:
            box["error"] = err
            return None
        box["sites"] = _site_table(model_tr)
        return None

    try:
        jax.eval_shape(run, key)
    except Exception:  # not traceable (Python control flow on values): run it concretely
        run(key)
    if "error" in box:
        raise box["error"]
    return box["sites"]


def _split_arrays(tree):
    """Array leaves of ``tree`` (passed to ``jax.jit`` as arguments) and a function rebuilding the tree from them;
    other leaves (Python objects, callables, ...) stay as they are."""
    leaves, treedef = jax.tree.flatten(tree)
    is_array = [isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves]

    def rebuild(arrays):
        it = iter(arrays)
        return jax.tree.unflatten(treedef, [next(it) if a else leaf for leaf, a in zip(leaves, is_array)])

    return [leaf for leaf, a in zip(leaves, is_array) if a], rebuild


def _evaluate(guide, model, args, kwargs, params, rng_key, num: int, predictive: bool) -> tuple[DrawRecord, Any]:
    rng_key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    key_first, key_draws, key_rest = jax.random.split(rng_key, 3)
    sites = _structure(guide, model, args, kwargs, params, key_first)
    one = _one_draw(guide, model, sites, predictive)
    keys = jax.random.split(key_draws, num)
    arrays, rebuild = _split_arrays((args, kwargs, params))

    def batched(keys, arrays):
        a, k, p = rebuild(arrays)
        return jax.vmap(lambda key: one(key, a, k, p), out_axes=_OUT_AXES)(keys)

    try:
        out = jax.jit(batched)(keys, arrays)
    except Exception:
        try:  # vmap alone lets the model use concrete values of its arguments
            out = jax.vmap(lambda key: one(key, args, kwargs, params), out_axes=_OUT_AXES)(keys)
        except Exception as err:  # not vectorisable: fall back to the exact loop
            msg = str(err).splitlines()[0] if str(err) else ""
            warnings.warn(f"the model or guide could not be vmapped over {num} draws ({type(err).__name__}: {msg}); "
                          "evaluating one draw at a time (slower). Avoid Python control flow on sampled values to "
                          "vectorise it.", stacklevel=3)
            draws = [one(k, args, kwargs, params) for k in keys]
            out = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *[d[:5] for d in draws])
            out = (*out, draws[0][5])
    log_p, log_q, values, log_lik, ppc, observed = jax.tree.map(np.asarray, out)
    in_model_order = lambda d: {n: d[n] for n in sites if n in d}  # noqa: E731  (JAX sorts dict keys)
    values, log_lik, ppc, observed = map(in_model_order, (values, log_lik, ppc, observed))
    record = DrawRecord(log_p, log_q, sites, values, observed, log_lik, ppc if predictive and ppc else None)
    return record, key_rest


def _uniforms(key: Any, num: int) -> np.ndarray:
    return np.asarray(jax.random.uniform(key, (num,)), dtype=np.float64)


def _is_flow_guide(guide: Any) -> bool:
    """Whether the guide is already a normalizing flow (ours, or NumPyro's IAF / BNAF autoguides)."""
    from numpyro.infer.autoguide import AutoBNAFNormal, AutoIAFNormal

    from ..infer.autoguide import AutoFlowGuide

    return isinstance(guide, (AutoFlowGuide, AutoIAFNormal, AutoBNAFNormal))


# ------------------------------------------------------------------------------------------------ public API


def vi_diagnostics(guide: Callable, model: Callable, *args: Any, params: dict, rng_key: Any = None,
                   num_samples: int = 1000, resample: bool = False, **kwargs: Any) -> VIDiagnostics:
    """Pareto k̂, ELBO, IW-ELBO and ESS of a NumPyro guide's importance weights against its model.

    Draws θ_s ~ q (s = 1..S) from the guide, replays the model on them and computes
    log w_s = log p(θ_s, data) - log q(θ_s); PSIS fits a generalised Pareto to the largest weights, whose shape k̂
    says whether q covers the posterior (< 0.5 good, < 0.7 usable after smoothing, else unreliable). Works for any
    guide: AutoNormal, AutoMultivariateNormal, AutoIAFNormal, flow guides, hand-written guides with a density (not
    point masses such as AutoDelta). The model must not subsample; its latent sites must all be drawn by the guide.

    Args:
        guide: the guide, called as ``guide(*args, **kwargs)``.
        model: the model, called like the guide.
        *args: the model's arguments, as for SVI.
        params: the fitted parameters (``svi_result.params`` / ``svi.get_params(state)``: constrained values),
            substituted into the guide and the model.
        rng_key: a ``jax.random.PRNGKey`` for the draws (default ``PRNGKey(0)``).
        num_samples: S, the number of guide draws (at least 25; 1000 or more for a stable k̂).
        resample: also return ``draws``: S draws per latent/deterministic site resampled with the PSIS-smoothed
            weights (sampling-importance-resampling), closer to the posterior than the raw guide draws.
        **kwargs: the model's keyword arguments.

    Returns:
        A :class:`VIDiagnostics` (``print`` it for a table). k̂ = -inf means all weights are equal: q is the posterior.

    Example:
        >>> svi_result = SVI(model, guide, optax.adam(1e-2), Trace_ELBO()).run(key, 2000, data)   # doctest: +SKIP
        >>> print(vi_diagnostics(guide, model, data, params=svi_result.params))                  # doctest: +SKIP

    Paper: Yao, Vehtari, Simpson, Gelman (2018), "Yes, but did it work?: Evaluating variational inference", ICML.
    """
    check_counts(num_samples, 1)
    record, key_rest = _evaluate(guide, model, args, kwargs, params, rng_key, num_samples, predictive=False)
    summary = VIDiagnostics.from_log_weights(record.log_weights, flow_guide=_is_flow_guide(guide))
    if not resample:
        return summary
    idx = resample_indices(summary.smoothed_log_weights, _uniforms(key_rest, num_samples))
    draws = {name: value[idx] for name, value in record.values.items()}
    return dataclasses.replace(summary, draws=draws)


def to_inference_data(guide: Callable, model: Callable, *args: Any, params: dict, rng_key: Any = None,
                      num_samples: int = 1000, num_chains: int = 1, posterior_predictive: bool = False,
                      log_likelihood: bool = True, psis: bool = False, **kwargs: Any):
    """An ArviZ container of S guide draws, with PSIS k̂, ELBO and IW-ELBO in its attrs: an ``arviz.InferenceData``
    under ArviZ 0.x, an ``xarray.DataTree`` under ArviZ 1.x (each accepted by that version's ``summary``, ``loo`` and
    plots).

    Draws θ_s ~ q from the guide and replays the model on them (see :func:`vi_diagnostics` for the weights
    log w_s = log p(θ_s, data) - log q(θ_s)). Groups: ``posterior`` (every latent site in its constrained space and
    every ``numpyro.deterministic`` site, shape (chain, draw, *site shape); the S draws are split into ``num_chains``
    independent chains), ``sample_stats`` (``log_p``, ``log_q``, ``log_weight`` per draw), ``observed_data``,
    ``log_likelihood`` (pointwise per observed site, so ``az.loo`` works) and, if asked, ``posterior_predictive``
    (every observed site redrawn jointly from the model at each draw). An axis lying in a ``numpyro.plate`` is named
    after the plate (coords 0..n-1); other axes ``<site>_dim_<k>``. Attrs: ``psis_khat``, ``elbo``, ``iw_elbo``,
    ``ess``, ``verdict``, ``draws`` (``"guide"`` or ``"psis_resampled"``), ``inference_library`` (+ ``_version``),
    ``numpyroflows_version``, ``created_at``.

    The draws come from the guide q, not the posterior: ``az.loo`` treats them as posterior draws. Pass ``psis=True``
    to resample them with the PSIS-smoothed weights first (sampling-importance-resampling; sound when k̂ < 0.7), or,
    under ArviZ 1.x, call ``az.loo_approximate_posterior(data, data.sample_stats["log_p"],
    data.sample_stats["log_q"])``, which corrects PSIS-LOO for the guide (Magnusson et al. 2019).

    Args:
        guide: the guide, called as ``guide(*args, **kwargs)``.
        model: the model, called like the guide.
        *args: the model's arguments, as for SVI.
        params: the fitted parameters (``svi_result.params``), substituted into the guide and the model.
        rng_key: a ``jax.random.PRNGKey`` for the draws (default ``PRNGKey(0)``).
        num_samples: total number of draws S (at least 25), a multiple of ``num_chains``.
        num_chains: how many chains to split the independent draws into.
        posterior_predictive: add a ``posterior_predictive`` group.
        log_likelihood: add the ``log_likelihood`` group.
        psis: resample every group's draws with the PSIS-smoothed weights (warns when k̂ >= 0.7, where resampling
            cannot repair the guide).
        **kwargs: the model's keyword arguments.

    Example:
        >>> idata = to_inference_data(guide, model, data, params=svi_result.params, num_chains=4)   # doctest: +SKIP
        >>> az.summary(idata); az.loo(idata); idata.attrs["psis_khat"]                               # doctest: +SKIP

    Paper: Yao, Vehtari, Simpson, Gelman (2018), "Yes, but did it work?: Evaluating variational inference", ICML.
    """
    check_counts(num_samples, num_chains)
    record, key_rest = _evaluate(guide, model, args, kwargs, params, rng_key, num_samples,
                                 predictive=posterior_predictive)
    summary = VIDiagnostics.from_log_weights(record.log_weights, flow_guide=_is_flow_guide(guide))
    uniforms = _uniforms(key_rest, num_samples) if psis else None
    import numpyroflows

    return build_inference_data(record, summary, num_chains=num_chains, posterior_predictive=posterior_predictive,
                                log_likelihood=log_likelihood, library="numpyro",
                                library_version=numpyro.__version__, package="numpyroflows",
                                package_version=numpyroflows.__version__, resample_uniforms=uniforms)
