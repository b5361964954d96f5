"""The backend-free half of ``AutoFlowGuide`` (pyroflows and numpyroflows): defaults, the flow name table, argument
and site checks with their messages, the :class:`WarmStart` record, the stopping test of the mode search, and the
Laplace algebra (the Cholesky factor of ``H⁻¹``), in NumPy float64, and what ``warm_start="auto"`` stands for.

The checks are plain functions of plain values, so that other front ends (``FlowEncoder``) can share them; ``ppl``
arguments (``"pyro"`` or ``"numpyro"``) only choose how a message spells the PPL's own code.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------------------------------- defaults
#: The flow used when none is named (see benchmarks/guide_choice_pyro.py for the comparison behind it).
DEFAULT_FLOW = "iaf"
#: Number of flow layers before the final diagonal affine map.
DEFAULT_NUM_TRANSFORMS = 3
#: Initial standard deviation of every unconstrained coordinate.
DEFAULT_INIT_SCALE = 0.1
#: ``hidden_dims=None``: two layers of ``max(32, min(4 D, 256))`` units (see :func:`default_hidden_dims`).
HIDDEN_MIN, HIDDEN_PER_DIM, HIDDEN_MAX, HIDDEN_LAYERS = 32, 4, 256, 2
#: Draws used to place the guide at ``N(init_loc, init_scale²)`` and by ``median``/``quantiles`` (fixed seed).
NUM_INIT_SAMPLES = 4096
NUM_QUANTILE_SAMPLES = 1000
SEED = 0
#: Warm start: the guide's default (``"auto"``: :func:`resolve_warm_start`), methods, L-BFGS iterations, draws of
#: the Monte Carlo ELBO that decides between the warm start and the default start, L-BFGS memory, line-search budget,
#: and the largest latent size for which ``"laplace"`` forms the D x D Hessian.
DEFAULT_WARM_START = "auto"
WARM_START_METHODS = ("auto", "laplace", "map")
DEFAULT_WARM_START_STEPS = 1000
START_ELBO_DRAWS = 64
LBFGS_HISTORY = 20
LINE_SEARCH_EVALS = 25
LAPLACE_MAX_DIM = 2000
#: Stopping rule of the search (in float64): max |gradient| <= ``GTOL``; or the best -log p not lowered by
#: ``FTOL_EPS`` machine epsilons (relative) in ``PATIENCE`` iterations, which counts as converged only where the
#: relative gradient (:func:`relative_gradient`) is at most ``RGTOL = eps^(1/3)``.
GTOL = 1e-5
FTOL_EPS = 10.0
PATIENCE = 10
RGTOL = float(np.finfo(np.float64).eps) ** (1 / 3)
#: Laplace start: Hessian eigenvalues below ``EIG_RTOL`` x the largest (or not positive) are raised to
#: ``1 / init_scale²``.
EIG_RTOL = 1e-12

# ----------------------------------------------------------------------------------------------------- flow table
#: name -> (recipe class name in ``<pkg>.flows.recipes``, fixed keyword arguments). A guide samples and scores its own
#: samples, so every entry with two orientations is the sampling-fast one, except "maf" and "nsf" (sampling in ``D``
#: passes per layer, offered for comparison).
FLOW_RECIPES: dict[str, tuple[str, dict[str, Any]]] = {
    "iaf": ("IAF", {"transformer": "affine"}),
    "maf": ("MAF", {"transformer": "affine"}),
    "nsf": ("NSF", {}),
    "spline_iaf": ("IAF", {"transformer": "spline"}),
    "realnvp": ("RealNVP", {}),
    "nice": ("NICE", {}),
    "spline_coupling": ("Coupling", {"transformer": "spline"}),
    "bnaf": ("BNAF", {"orientation": "iaf"}),
    "planar": ("Planar", {}),
    "radial": ("Radial", {}),
    "sylvester": ("Sylvester", {}),
}
#: flows made of coupling layers (they need a latent of size >= 2)
COUPLING_FLOWS = frozenset({"realnvp", "nice", "spline_coupling"})
#: arguments a guide sets itself, with what it sets them to (numpyroflows adds ``key``)
SET_BY_GUIDE = {"input_dim": "input_dim = the latent size", "context_dim": "no context",
                "key": "the PRNG key from numpyro.prng_key()"}


def flow_table(recipes: Any) -> dict[str, tuple[type, dict[str, Any]]]:
    """``FLOWS`` of a package: :data:`FLOW_RECIPES` with each recipe name resolved in its ``recipes`` module."""
    return {name: (getattr(recipes, recipe), dict(fixed)) for name, (recipe, fixed) in FLOW_RECIPES.items()}


def recipe_arguments(recipe: type) -> set[str]:
    """The keyword arguments a recipe's constructor takes (``*args``/``**kwargs`` excluded)."""
    params = inspect.signature(recipe.__init__).parameters  # follows the recording wrapper to the real signature
    return {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def default_hidden_dims(latent_dim: int) -> tuple[int, ...]:
    """Hidden widths of the guide's networks when ``hidden_dims=None``: two layers of ``max(32, min(4 D, 256))``.

    Up to ``D = 64`` this is ``max(32, 4 D)``: a MADE then has several hidden units of every degree, so each coordinate
    can depend on all that precede it. Above, the width stays 256 so that parameters, memory and the cost of a step
    grow linearly in ``D`` (a MADE layer holds about ``3 D H + H²`` weights, ``28 D²`` at ``H = 4 D``); the MADE's
    hidden degrees are then ``1..256``, so in each layer every coordinate depends on the first 256 of the layer's
    order (the recipes alternate the order between layers), which keeps the dependence of local latents on the global
    ones that models sample first.
    """
    width = max(HIDDEN_MIN, min(HIDDEN_PER_DIM * int(latent_dim), HIDDEN_MAX))
    return (width,) * HIDDEN_LAYERS


# ----------------------------------------------------------------------------------------------------- checks
def check_init_scale(init_scale: Any, min_scale: float) -> float:
    """``init_scale`` as a float, or a ``ValueError`` if it is not a number above the guide's scale floor."""
    if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or not init_scale > min_scale:
        raise ValueError(f"init_scale must be a number > {min_scale} (the floor of the guide's scale), got "
                         f"{init_scale!r}")
    return float(init_scale)


def check_positive_int(value: Any, name: str) -> int:
    """``value`` if it is an integer >= 1 (not a bool), else a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_warm_start(method: Any, num_steps: Any = 0, option: bool = False) -> None:
    """A ``ValueError`` for an unknown warm start method (``option``: the constructor's ``warm_start=``, which may
    also be ``None``) or a ``num_steps`` that is not a non-negative integer."""
    if option:
        if method is not None and method not in WARM_START_METHODS:
            raise ValueError(f"warm_start must be 'auto', 'laplace', 'map' or None, got {method!r}")
        return
    if method not in WARM_START_METHODS:
        raise ValueError(f"unknown warm start method {method!r}: use 'auto', 'laplace' or 'map'")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative integer, got {num_steps!r}")


def resolve_warm_start(method: str, latent_dim: int, max_dim: int) -> str:
    """The method that ``"auto"`` stands for: ``"laplace"`` where the latent fits ``max_dim`` (the D x D Hessian),
    else ``"map"``; other methods are returned as they are. Where the search or the Hessian falls short, the warm
    start itself falls back (:func:`laplace_outcome`, :func:`keep_warm_start`): to the mode, or to the default start
    with a warning."""
    if method == "auto":
        return "laplace" if latent_dim <= max_dim else "map"
    return method


def check_flow_choice(flow: Any, table: Mapping[str, tuple[type, dict]], hidden_dims: Sequence[int] | None,
                      flow_kwargs: Mapping[str, Any], set_by: Sequence[str], package: str,
                      owner: str = "AutoFlowGuide") -> None:
    """Check ``flow`` (a name from ``table`` or a callable) against the other arguments; ``set_by``: the arguments
    the caller sets itself (keys of :data:`SET_BY_GUIDE`), ``package``: ``"pyroflows"`` or ``"numpyroflows"``."""
    if callable(flow) and not isinstance(flow, str):
        extra = sorted(flow_kwargs) + (["hidden_dims"] if hidden_dims is not None else [])
        if extra:
            raise TypeError(f"{extra} apply to named flows only; with a callable `flow`, pass them to the flow you "
                            "build inside the callable")
        return
    if not isinstance(flow, str):
        raise TypeError(f"flow must be a name ({', '.join(table)}) or a callable latent_dim -> Flow, got {flow!r}")
    if flow not in table:
        raise ValueError(f"unknown flow {flow!r}: use one of {', '.join(repr(n) for n in table)}, "
                         f"or pass a callable latent_dim -> {package} Flow")
    recipe, _ = table[flow]
    accepted = recipe_arguments(recipe) - set(set_by) - {"num_transforms"}
    reserved = sorted(set(flow_kwargs) & set(set_by))
    if reserved:
        raise TypeError(f"{owner} sets {reserved} itself ({', '.join(SET_BY_GUIDE[k] for k in set_by)}); remove them "
                        "from the arguments")
    unknown = sorted(set(flow_kwargs) - accepted)
    if unknown:
        raise TypeError(f"flow {flow!r} ({recipe.__name__}) takes no argument(s) {unknown}; it accepts "
                        f"{sorted(accepted | {'num_transforms'})}")
    if hidden_dims is not None and "hidden_dims" not in accepted:
        raise TypeError(f"flow {flow!r} ({recipe.__name__}) takes no hidden_dims; set its size with {sorted(accepted)}")


def recipe_kwargs(name: str, table: Mapping[str, tuple[type, dict]], latent_dim: int, num_transforms: int,
                  hidden_dims: Sequence[int] | None, flow_kwargs: Mapping[str, Any]) -> tuple[type, dict[str, Any]]:
    """The recipe of flow ``name`` and its keyword arguments for a latent of size ``latent_dim`` (``hidden_dims``
    ``None``: :func:`default_hidden_dims`, for recipes that take it); a ``ValueError`` for a coupling flow in 1-D."""
    if name in COUPLING_FLOWS and latent_dim < 2:
        raise ValueError(f"flow {name!r} uses coupling layers, which need a latent of size >= 2, but this model has a "
                         "single unconstrained latent coordinate: use flow='iaf' or 'spline_iaf'")
    recipe, fixed = table[name]
    kwargs = {**fixed, **flow_kwargs, "num_transforms": num_transforms}
    if "hidden_dims" in recipe_arguments(recipe):
        kwargs["hidden_dims"] = tuple(hidden_dims) if hidden_dims else default_hidden_dims(latent_dim)
    return recipe, kwargs


def check_flow_result(flow: Any, flow_type: type, input_dim: int | None, context_dim: int | None,
                      latent_dim: int, package: str) -> None:
    """What a ``flow`` callable returned must be a ``flow_type`` with ``input_dim = latent_dim`` and no context."""
    if not isinstance(flow, flow_type):
        raise TypeError(f"the `flow` callable must return a {package} Flow, got {type(flow).__name__}")
    if input_dim != latent_dim or context_dim != 0:
        raise ValueError(f"the `flow` callable returned a flow with input_dim={input_dim}, context_dim={context_dim}; "
                         f"this model needs input_dim={latent_dim} and context_dim=0")


def check_laplace_size(latent_dim: int, max_dim: int) -> None:
    """A ``ValueError`` naming the fix where ``method='laplace'`` would form a Hessian above ``max_dim``."""
    d = latent_dim
    if d > max_dim:
        raise ValueError(f"warm_start(method='laplace') forms the {d} x {d} Hessian and adds {d}² parameters; this "
                         f"model has D = {d} > laplace_max_dim = {max_dim}: use method='map' (the mode, no Hessian), "
                         "or raise AutoFlowGuide.laplace_max_dim if you have the memory")


# ----------------------------------------------------------------------------------------------------- site messages
_BLOCK = {"pyro": "poutine.block", "numpyro": "numpyro.handlers.block"}


def discrete_site_message(name: str, dist_name: str, ppl: str) -> str:
    """The error for a discrete latent site: marginalise it (enumeration) and guide the rest, or make it continuous."""
    return (f"AutoFlowGuide: latent site {name!r} is discrete ({dist_name}); the guide covers continuous latents only. "
            "Marginalise it: mark it with config_enumerate / infer={'enumerate': 'parallel'}, train with "
            f"TraceEnum_ELBO, and build the flow guide on {_BLOCK[ppl]}(model, hide=[{name!r}]) (inside an "
            "AutoGuideList if other parts need a guide); or make the variable continuous.")


def subsampled_site_message(name: str, plate: str, size: int, full_size: int, ppl: str,
                            plates: Sequence[str] = ()) -> str:
    """The error for a latent site in ``plate``, subsampled: a per-datum guide for it, the flow for the rest.
    NumPyro's ``block`` must expose the site's ``plates`` too (its guide looks them up)."""
    expose = [name, *plates] if ppl == "numpyro" else [name]
    return (f"AutoFlowGuide: latent site {name!r} is inside plate {plate!r} subsampled to {size} of {full_size}; a "
            "global flow over it would learn only the current mini-batch. Use a per-datum or amortized guide for "
            f"local variables: e.g. an AutoGuideList with AutoNormal on {_BLOCK[ppl]}(model, expose={expose!r}) and "
            f"AutoFlowGuide on {_BLOCK[ppl]}(model, hide=[{name!r}]), or an amortized encoder; or do not subsample "
            "the plate.")


def no_latent_message(ppl: str) -> str:
    """The error for a model without a latent site."""
    what = ("continuous latent sample site (every pyro.sample is observed or empty)" if ppl == "pyro"
            else "latent sample site (every numpyro.sample is observed)")
    return (f"AutoFlowGuide: the model has no {what}; there is nothing to approximate: use an empty guide "
            "(def guide(*args, **kwargs): pass)")


class FlatDensityError(ValueError):
    """The warm start's ``log p(u)`` does not depend on ``u``: there is no mode to start from."""


FLAT_DENSITY_MESSAGE = (
    "AutoFlowGuide.warm_start: log p(u) does not depend on the latent values (every latent site has a flat improper "
    "prior such as ImproperUniform and no other term involves it): a flat density has no mode and no curvature to "
    "start from. Give the sites proper priors, or skip the warm start (warm_start=None) and choose the start with "
    "init_loc_fn=init_to_value(...) and init_scale")
#: what ``warm_start="auto"`` says when it meets such a density and keeps the default start instead
FLAT_DENSITY_FALLBACK = (
    "AutoFlowGuide: warm_start='auto' found that log p(u) does not depend on the latent values (flat improper priors "
    "such as ImproperUniform): it keeps the default start N(init_loc, init_scale²). Pass warm_start=None to start "
    "there without the search, and choose it with init_loc_fn=init_to_value(...) and init_scale")


# ----------------------------------------------------------------------------------------------------- warm start
@dataclass
class WarmStart:
    """What ``AutoFlowGuide.warm_start`` found (the same fields in both packages; arrays are the backend's).

    Attributes:
        method: ``"laplace"`` or ``"map"`` (``"map"`` also when a Laplace start fell back to it), or ``"none"`` when
            the guide kept its default start: the search found no clean mode (not converged, or eigenvalues floored;
            or ``"map"``) and the warm start's ELBO was below the default start's, or it was not finite; see
            ``message``.
        loc: the mode of ``log p(u)`` in unconstrained space, shape ``(D,)`` (the best point found; searched in
            float64, given in the guide's dtype).
        scale_tril: lower Cholesky factor of ``Σ = H⁻¹`` (``H`` the Hessian of ``-log p(u)`` at ``loc``, eigenvalues
            floored where needed); ``None`` for ``"map"``.
        log_density: ``log p(u)`` at ``loc`` (unnormalised: the model's log joint plus the log-Jacobian of
            ``biject_to``).
        num_iterations: L-BFGS iterations run.
        converged: whether the search stopped at a stationary point: max |gradient| below its tolerance, or no further
            decrease with a small relative gradient (not on ``num_steps``, a non-finite value, or a stall far from
            stationarity).
        message: how the search ended, and any adjustment (floored eigenvalues, fallback to ``"map"``).
        params: the guide's flow parameters after the warm start, by their PPL names (pyroflows: the param store's;
            numpyroflows: ``"<prefix>_flow$<name>"``, a valid ``init_params`` for ``SVI.init``/``SVI.run``).
        time_s: wall time of the warm start (search, Hessian and placement; in JAX compilation included).
    """

    method: str
    loc: Any
    scale_tril: Any
    log_density: float
    num_iterations: int
    converged: bool
    message: str
    params: dict[str, Any] = field(default_factory=dict)
    time_s: float = 0.0


#: exit codes of the search
RUNNING, GRAD_SMALL, NO_DECREASE, NOT_FINITE = 0, 1, 2, 3


def relative_gradient(grad: np.ndarray, u: np.ndarray, value: float) -> float:
    """``max_i |g_i| max(|u_i|, 1) / max(|f|, 1)``: the gradient scaled to the sizes of ``u`` and ``f`` (Dennis &
    Schnabel 1996, "Numerical Methods for Unconstrained Optimization and Nonlinear Equations", sec. 7.2), a
    stationarity test that does not depend on the units of ``u`` or ``f``."""
    g, x = np.abs(np.asarray(grad, np.float64)), np.abs(np.asarray(u, np.float64))
    return float(np.max(g * np.maximum(x, 1.0), initial=0.0) / max(abs(float(value)), 1.0))


def describe_search(code: int, iterations: int, num_steps: int, value: float, rel_grad: float,
                    detail: str = "") -> tuple[bool, str]:
    """``(converged, message)`` for a search that ended with exit ``code`` after ``iterations`` iterations at the
    point of value ``value`` (``-log p``) and relative gradient ``rel_grad``; warns where it stopped at a non-finite
    value (``detail`` says what was not finite)."""
    if code == GRAD_SMALL:
        if iterations == 0:
            return True, "the starting point is already a stationary point"
        return True, f"converged after {iterations} iterations (gradient below tolerance)"
    if code == NO_DECREASE:
        if rel_grad <= RGTOL:
            return True, f"converged after {iterations} iterations (no further decrease)"
        return False, (f"stopped after {iterations} iterations: no further decrease, but the relative gradient "
                       f"{rel_grad:.3g} is above {RGTOL:.1e}, so the point is not a mode")
    if code == NOT_FINITE:
        message = (f"stopped at iteration {iterations}: not finite at a point the search tried ({detail}); kept the "
                   f"best point found (log p = {-value:.6g})")
        warnings.warn(f"AutoFlowGuide.warm_start: {message}. Check the model's supports and priors, or start from a "
                      "better point with init_loc_fn=init_to_value(...)", RuntimeWarning, stacklevel=4)
        return False, message
    return False, f"stopped after num_steps={num_steps} iterations"


def laplace_factor(hessian: np.ndarray, init_scale: float) -> tuple[np.ndarray, int]:
    """Lower-triangular ``C`` with ``C Cᵀ = H⁻¹`` (float64), and how many eigenvalues of ``H`` were floored.

    ``H`` is symmetrised; eigenvalues that are not positive, or below ``EIG_RTOL`` times the largest, are set to
    ``1 / init_scale²`` (the guide's default width in those directions). ``C = J M⁻ᵀ J`` with ``M = chol(J H J)`` and
    ``J`` the reversal: a lower-triangular factor of ``H⁻¹`` without forming the inverse. Raises
    ``numpy.linalg.LinAlgError`` where ``H`` has no Cholesky factor even so."""
    h = np.asarray(hessian, np.float64)
    h = 0.5 * (h + h.T)
    lam, vec = np.linalg.eigh(h)
    top = float(lam.max())
    bad = ~(lam > EIG_RTOL * top) if top > 0 else np.ones_like(lam, dtype=bool)
    floored = int(bad.sum())
    if floored:
        lam = np.where(bad, 1.0 / init_scale**2, lam)
        h = (vec * lam) @ vec.T
        h = 0.5 * (h + h.T)
    m = np.linalg.cholesky(h[::-1, ::-1])
    m_inv = np.tril(np.linalg.solve(m, np.eye(len(h))))
    return m_inv.T[::-1, ::-1].copy(), floored


def laplace_outcome(hessian: np.ndarray, init_scale: float, message: str) -> tuple[np.ndarray | None, int, str]:
    """``(factor, floored, message)`` from the Hessian at the mode: :func:`laplace_factor`, or ``None`` where the
    Hessian is not finite or has no Cholesky factor (then ``"map"``); the search's ``message`` is extended with either
    adjustment, and both warn."""
    failure = None if np.all(np.isfinite(hessian)) else "is not finite"
    factor, floored = None, 0
    if failure is None:
        try:
            factor, floored = laplace_factor(hessian, init_scale)
        except np.linalg.LinAlgError:
            failure = "has no Cholesky factor even with its eigenvalues floored"
    if failure is not None:
        message += f"; the Hessian at the mode {failure}: fell back to method='map'"
        warnings.warn(f"AutoFlowGuide.warm_start: {message}", RuntimeWarning, stacklevel=4)
        return None, 0, message
    if not floored:
        return factor, 0, message
    warnings.warn(f"AutoFlowGuide.warm_start: the Hessian of -log p at the mode has {floored} eigenvalue(s) that are "
                  "not clearly positive (the search did not reach a maximum, or the posterior is flat in some "
                  "direction); the guide uses sd init_scale in those directions", RuntimeWarning, stacklevel=4)
    message += (f"; {floored} eigenvalue(s) of the Hessian were not (clearly) positive and were set to "
                f"1/init_scale² = {1 / init_scale ** 2:.3g}")
    return factor, floored, message


def keep_warm_start(method: str, converged: bool, floored: int, elbo_warm: float, elbo_default: float,
                    message: str) -> tuple[bool, str]:
    """Whether the placed warm start replaces the default start, and the search's ``message`` extended.

    A clean Laplace start (the search converged, the Hessian positive definite) is kept whatever its ELBO: a start's
    ELBO does not predict where SVI ends (a Laplace start wider than ``N(init_loc, init_scale²)`` scores lower, then
    trains to a better fit: banana, eight schools), and the check is for modes that are not real. Otherwise the warm
    start must have a finite ELBO at least the default start's; where it does not, this warns."""
    clean = method == "laplace" and converged and not floored
    if math.isfinite(elbo_warm) and (clean or elbo_warm >= elbo_default):
        return True, message
    message += (f"; the warm start's ELBO ({elbo_warm:.6g}) is below the default start's ({elbo_default:.6g}), so the "
            "guide keeps its default start N(init_loc, init_scale²)")
    warnings.warn(f"AutoFlowGuide.warm_start: {message}. A posterior without a reachable mode (a funnel, or log p "
                  "unbounded along some direction) has no useful Laplace or MAP start; reparameterize the model or "
                  "choose init_loc_fn", RuntimeWarning, stacklevel=4)
    return False, message
