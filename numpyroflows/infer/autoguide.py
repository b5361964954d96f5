"""``AutoFlowGuide``: a normalizing-flow posterior over all continuous latent sites of a NumPyro model.

Mirrors :mod:`pyroflows.infer.autoguide` (same names, arguments, defaults and parameter layout).
"""

from __future__ import annotations

import functools
import inspect
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import scipy.linalg
from numpyro import handlers
from numpyro.infer.autoguide import AutoContinuous
from numpyro.infer.initialization import init_to_median

from ..flows import recipes
from ..flows.core import Flow, FlowDistribution
from ..functional.affine import MIN_SCALE, affine_scale_inverse
from ..io import module
from ..transforms.base import FlowChain, chain_forward
from ..transforms.linear import DiagonalAffine, LULinear

Array = jax.Array

# ----------------------------------------------------------------------------------------------------- defaults
#: The flow used when none is named.
_DEFAULT_FLOW = "iaf"
#: Number of flow layers before the final diagonal affine map.
_DEFAULT_NUM_TRANSFORMS = 3
#: Initial standard deviation of every unconstrained coordinate.
_DEFAULT_INIT_SCALE = 0.1
#: Hidden widths when ``hidden_dims=None``: two layers of ``max(32, 4 * latent_dim)`` units.
_DEFAULT_HIDDEN_MIN = 32
_DEFAULT_HIDDEN_PER_DIM = 4
_DEFAULT_HIDDEN_LAYERS = 2
#: Draws used to place the guide at ``N(init_loc, init_scale²)`` and by ``median``/``quantiles`` (fixed seed).
_DEFAULT_NUM_INIT_SAMPLES = 4096
_DEFAULT_NUM_QUANTILE_SAMPLES = 1000
_SEED = 0
#: Warm start (:meth:`AutoFlowGuide.warm_start`): methods, L-BFGS iterations, L-BFGS memory, line-search budget, the
#: largest latent size for which ``"laplace"`` forms the D x D Hessian, and the stopping rule: max |gradient| <=
#: ``_WARM_START_GTOL``, or the best -log p not lowered by ``_WARM_START_FTOL_EPS`` machine epsilons (relative) in
#: ``_WARM_START_PATIENCE`` iterations (no more progress at this precision).
_WARM_START_METHODS = ("laplace", "map")
_DEFAULT_WARM_START_STEPS = 1000
#: draws of the Monte Carlo ELBO that decides between the warm start and the default start
_START_ELBO_DRAWS = 64
_WARM_START_HISTORY = 20
_LINE_SEARCH_EVALS = 25
_LAPLACE_MAX_DIM = 2000
_WARM_START_GTOL = 1e-5
_WARM_START_FTOL_EPS = 10.0
_WARM_START_PATIENCE = 10
#: Laplace placement: Hessian eigenvalues below ``_EIG_RTOL`` x the largest (or not positive) are raised to
#: ``1 / init_scale²``; every scale of the final layers is kept >= ``_LAYER_FLOOR`` (twice the affine floor), and the
#: LU layer's diagonal is given at least ``_LU_DIAG_TARGET`` where the outer scale allows it.
_EIG_RTOL = 1e-12
_LAYER_FLOOR = 2 * MIN_SCALE
_LU_DIAG_TARGET = 1e-2

#: name -> (recipe, fixed keyword arguments). A guide only samples and scores its own samples, so every entry with
#: two orientations is the sampling-fast one except "maf" and "nsf" (sampling in ``D`` passes, kept for comparison).
FLOWS: dict[str, tuple[type[Flow], dict[str, Any]]] = {
    "iaf": (recipes.IAF, {"transformer": "affine"}),
    "maf": (recipes.MAF, {"transformer": "affine"}),
    "nsf": (recipes.NSF, {}),
    "spline_iaf": (recipes.IAF, {"transformer": "spline"}),
    "realnvp": (recipes.RealNVP, {}),
    "nice": (recipes.NICE, {}),
    "spline_coupling": (recipes.Coupling, {"transformer": "spline"}),
    "bnaf": (recipes.BNAF, {"orientation": "iaf"}),
    "planar": (recipes.Planar, {}),
    "radial": (recipes.Radial, {}),
    "sylvester": (recipes.Sylvester, {}),
}
_COUPLING = {"realnvp", "nice", "spline_coupling"}
_SET_BY_GUIDE = {"input_dim", "context_dim", "key"}


def _recipe_arguments(recipe: type[Flow]) -> set[str]:
    params = inspect.signature(recipe.__init__).parameters  # follows the recording wrapper to the real signature
    return {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


@jax.jit
def _forward(transforms: tuple, z: Array) -> Array:
    """``T(z)`` through ``transforms`` (compiled once per flow structure instead of op by op)."""
    return chain_forward(transforms, z, None)[0]


@functools.partial(jax.jit, static_argnums=2)
def _sample_and_log_prob(d: FlowDistribution, key: Array, sample_shape: tuple) -> tuple[Array, Array]:
    """``FlowDistribution.sample_and_log_prob``, compiled as one program (also when called eagerly)."""
    return FlowDistribution.sample_and_log_prob(d, key, sample_shape)


def _start_elbo(flow: Flow, neg_log_density: Callable[[Array], Array]) -> float:
    """Monte Carlo ELBO ``E_q[log p(u) - log q(u)]`` of a starting flow from ``_START_ELBO_DRAWS`` draws under the
    fixed key ``_SEED`` (the same draws for every flow compared); ``nan`` where it is not finite."""
    u, log_q = flow().sample_and_log_prob(jax.random.PRNGKey(_SEED), (_START_ELBO_DRAWS,))
    value = float(jnp.mean(-jax.vmap(neg_log_density)(u) - log_q))
    return value if np.isfinite(value) else float("nan")


@dataclass
class WarmStart:
    """What :meth:`AutoFlowGuide.warm_start` found (the same fields as in pyroflows).

    Attributes:
        method: ``"laplace"`` or ``"map"`` (``"map"`` also when a Laplace start fell back to it), or ``"none"`` when
            the guide kept its default start: the search found no clean mode (not converged, or eigenvalues floored;
            or ``"map"``) and the warm start's ELBO was below the default start's, or it was not finite; see
            ``message``.
        loc: the mode of ``log p(u)`` in unconstrained space, shape ``(D,)`` (the best point found).
        scale_tril: lower Cholesky factor of ``Σ = H⁻¹`` (``H`` the Hessian of ``-log p(u)`` at ``loc``, eigenvalues
            floored where needed); ``None`` for ``"map"``.
        log_density: ``log p(u)`` at ``loc`` (unnormalised: the model's log joint plus the log-Jacobian of
            ``biject_to``).
        num_iterations: L-BFGS iterations run.
        converged: whether the search stopped on its tolerance (not on ``num_steps`` or a non-finite value).
        message: how the search ended, and any adjustment (floored eigenvalues, fallback to ``"map"``).
        params: the guide's flow parameters after the warm start, ``{"<prefix>_flow$<name>": array}``: what
            ``svi.init`` now starts from, and a valid ``init_params`` for ``SVI.init``/``SVI.run``.
        time_s: wall time of the warm start (search, Hessian and placement; the first call includes compilation).
    """

    method: str
    loc: Array
    scale_tril: Array | None
    log_density: float
    num_iterations: int
    converged: bool
    message: str
    params: dict[str, Array] = field(default_factory=dict)
    time_s: float = 0.0


#: exit codes of the search
_RUNNING, _GRAD_SMALL, _NO_DECREASE, _NOT_FINITE = 0, 1, 2, 3


def _minimize_lbfgs(fn: Callable[[Array], Array], u0: Array, num_steps: int) -> tuple[Array, Array, Array, Array]:
    """Minimise ``fn`` from ``u0`` with optax's L-BFGS (zoom line search, strong Wolfe), keeping the best point.

    One compiled ``while_loop``; stops when max |∇fn| <= ``_WARM_START_GTOL``, when ``fn`` no longer decreases
    (the best value not improved by ``_WARM_START_FTOL_EPS`` machine epsilons, relative, in ``_WARM_START_PATIENCE``
    iterations), after ``num_steps`` iterations, or when a new
    iterate's value or gradient is not finite (the line search itself steps back from non-finite trial points).
    Returns ``(best u, fn(best u), iterations, exit code)``."""
    opt = optax.lbfgs(memory_size=_WARM_START_HISTORY, linesearch=optax.scale_by_zoom_linesearch(
        max_linesearch_steps=_LINE_SEARCH_EVALS, initial_guess_strategy="one"))
    value_and_grad = optax.value_and_grad_from_state(fn)
    eps = jnp.finfo(u0.dtype).eps

    def cond(carry: tuple) -> Array:
        return (carry[2] < num_steps) & (carry[6] == _RUNNING)

    def body(carry: tuple) -> tuple:
        u, state, it, best_u, best_v, stalls, _ = carry
        v, g = value_and_grad(u, state=state)
        updates, state = opt.update(g, state, u, value=v, grad=g, value_fn=fn)
        u = optax.apply_updates(u, updates)
        v_new = optax.tree_utils.tree_get(state, "value")
        g_new = optax.tree_utils.tree_get(state, "grad")
        finite = jnp.isfinite(v_new) & jnp.all(jnp.isfinite(g_new)) & jnp.all(jnp.isfinite(u))
        progress = finite & (v_new < best_v - _WARM_START_FTOL_EPS * eps * (1 + jnp.abs(best_v)))
        better = finite & (v_new < best_v)
        best_u, best_v = jnp.where(better, u, best_u), jnp.where(better, v_new, best_v)
        stalls = jnp.where(progress, 0, stalls + 1)
        code = jnp.where(~finite, _NOT_FINITE, jnp.where(jnp.max(jnp.abs(g_new)) <= _WARM_START_GTOL, _GRAD_SMALL,
                                                         jnp.where(stalls >= _WARM_START_PATIENCE, _NO_DECREASE,
                                                                   _RUNNING)))
        return u, state, it + 1, best_u, best_v, stalls, code

    v0, g0 = jax.value_and_grad(fn)(u0)
    code0 = jnp.where(jnp.max(jnp.abs(g0)) <= _WARM_START_GTOL, _GRAD_SMALL, _RUNNING)
    carry = (u0, opt.init(u0), jnp.asarray(0), u0, v0, jnp.asarray(0), code0)
    _, _, it, best_u, best_v, _, code = jax.lax.while_loop(cond, body, carry)
    return best_u, best_v, it, code


def _laplace_factor(hessian: np.ndarray, init_scale: float) -> tuple[np.ndarray, int]:
    """Lower-triangular ``C`` with ``C Cᵀ = H⁻¹`` (float64, NumPy), and how many eigenvalues of ``H`` were floored.

    As :func:`pyroflows.infer.autoguide._laplace_factor`: ``H`` symmetrised, eigenvalues that are not positive or
    below ``_EIG_RTOL`` times the largest set to ``1 / init_scale²``, ``C = J M⁻ᵀ J`` with ``M = chol(J H J)``."""
    h = np.asarray(hessian, np.float64)
    h = 0.5 * (h + h.T)
    lam, vec = np.linalg.eigh(h)
    top = float(lam.max())
    bad = ~(lam > _EIG_RTOL * top) if top > 0 else np.ones_like(lam, dtype=bool)
    floored = int(bad.sum())
    if floored:
        lam = np.where(bad, 1.0 / init_scale**2, lam)
        h = (vec * lam) @ vec.T
        h = 0.5 * (h + h.T)
    m = np.linalg.cholesky(h[::-1, ::-1])
    m_inv = scipy.linalg.solve_triangular(m, np.eye(len(h)), lower=True)
    return np.ascontiguousarray(m_inv.T[::-1, ::-1]), floored


def _lu_placement(factor: np.ndarray, mean: np.ndarray, sd: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Initial values of the LU layer and the outer scale (float64, NumPy); see
    :func:`pyroflows.infer.autoguide._lu_placement`. Returns ``(packed, w, b, s', clamped)``."""
    c = np.asarray(factor, np.float64)
    mean, sd = np.asarray(mean, np.float64), np.asarray(sd, np.float64)
    p = np.diag(c) / sd
    marginal = np.linalg.norm(c, axis=1)
    outer = np.maximum(np.minimum(marginal, p / _LU_DIAG_TARGET), _LAYER_FLOOR)
    w_mat = c / outer[:, None] / sd[None, :]
    w = np.diag(w_mat).copy()
    clamped = int((w < _LAYER_FLOOR).sum())
    w_safe = np.maximum(w, _LAYER_FLOOR)
    lower = np.tril(w_mat / w[None, :], -1)
    weight = (lower + np.eye(len(w))) * w_safe[None, :]
    return lower, w_safe, -(weight @ mean), outer, clamped


def _zero_conditioner_outputs(transforms: Sequence) -> list:
    """The transforms with the output weights of their conditioners zeroed (``made.flat``'s last weight block in
    autoregressive layers, the last layer of the ``net.*`` MLP in coupling layers), so that each such layer computes
    exactly its output bias: the transformer's identity parameters in every recipe that starts at the identity (see
    :func:`pyroflows.infer.autoguide._zero_conditioner_outputs`)."""
    out = []
    for t in transforms:
        params = dict(t.params)
        if "made.flat" in params and hasattr(t, "transformer") and getattr(t, "hidden_dims", None):
            flat = params["made.flat"]  # layout [W_1, b_1, ..., W_L, b_L], W_L of shape (D P, hidden_dims[-1])
            n_out = t.input_dim * t.transformer.num_params
            stop = flat.shape[0] - n_out
            params["made.flat"] = flat.at[stop - n_out * t.hidden_dims[-1]: stop].set(0.0)
        layers = [int(k.split(".")[2]) for k in params if k.startswith("net.layers.") and k.endswith(".weight")]
        last = f"net.layers.{max(layers)}.weight" if layers else "net.input_layer.weight"
        if last in params:
            params[last] = jnp.zeros_like(params[last])
        out.append(t.with_params(params))
    return out


class _GuideFlowDistribution(FlowDistribution):
    """A :class:`FlowDistribution` whose draws (with their log-density, handed to NumPyro's ELBO as intermediates
    by :meth:`FlowDistribution.sample_with_intermediates`) run as one compiled program, also when called eagerly
    (``Predictive``, ``sample_posterior``)."""

    def sample_and_log_prob(self, key: Array, sample_shape: tuple = ()) -> tuple[Array, Array]:
        return _sample_and_log_prob(self, key, tuple(sample_shape))

    def sample(self, key: Array, sample_shape: tuple = ()) -> Array:
        return self.sample_and_log_prob(key, sample_shape)[0]


class AutoFlowGuide(AutoContinuous):
    """A NumPyro autoguide whose posterior over the unconstrained latent vector is a normalizing flow.

    All continuous latent sites are mapped to unconstrained space with ``biject_to(support).inv`` and concatenated
    into ``u ∈ R^D`` (the log-Jacobian of each constraint enters exactly, as in every ``AutoContinuous`` guide). The
    posterior over ``u`` is ``u = loc + scale ⊙ T(z)``, ``z ~ N(0, I_D)``, where ``T`` is the chosen flow and the last
    layer is a learnable :class:`~numpyroflows.transforms.linear.DiagonalAffine`; the whole chain is one
    :class:`~numpyroflows.flows.Flow`, and the ELBO scores the guide's own sample from its forward pass (no inverse
    pass). ``loc`` and ``scale`` start so that the draws of ``u`` have mean ``init_loc`` (from ``init_loc_fn``) and
    standard deviation ``init_scale`` per coordinate; for the recipes that start at the identity (all but bnaf,
    radial, sylvester) this is ``loc = init_loc``, ``scale = init_scale``, i.e. the guide starts as
    ``AutoNormal`` does. The flow's parameters are registered with ``numpyro.param`` under
    ``f"{prefix}_flow$<name>"`` (names as in :attr:`numpyroflows.flows.Flow.params`); their initial values are drawn
    with a key from ``numpyro.prng_key()`` on the guide's first call (``SVI.init``).

    Warm start: on posteriors that are far from ``init_loc`` and badly conditioned (e.g. regressions on unscaled
    predictors with flat priors) SVI spends thousands of steps travelling. :meth:`warm_start` first maximises
    ``log p(u)`` with L-BFGS and places the guide at the mode (``"map"``) or at the Laplace approximation
    ``N(mode, H⁻¹)`` (``"laplace"``, which inserts a full-rank ``LULinear`` layer before the final affine map), then
    SVI refines it. It is explicit: without it the guide starts at ``N(init_loc, init_scale²)``.

    Args:
        model: a NumPyro model with static structure and continuous latent sites.
        flow: a name from :data:`FLOWS` (``"iaf"``, ``"maf"``, ``"nsf"``, ``"spline_iaf"``, ``"realnvp"``, ``"nice"``,
            ``"spline_coupling"``, ``"bnaf"``, ``"planar"``, ``"radial"``, ``"sylvester"``) or a callable
            ``latent_dim -> Flow`` (a numpyroflows flow with ``input_dim = latent_dim`` and ``context_dim = 0``).
        prefix: prefix of the guide's parameter and auxiliary site names.
        num_transforms: number of flow layers (named flows only).
        hidden_dims: hidden widths of the flow's networks; ``None`` gives ``(max(32, 4 * latent_dim),) * 2``. Passed
            only to recipes that take it.
        init_loc_fn: per-site initialisation (``numpyro.infer.initialization``), e.g. ``init_to_value``.
        init_scale: initial standard deviation of each unconstrained coordinate (> 1e-3).
        create_plates: as in NumPyro's ``AutoGuide``.
        warm_start: ``None`` (default), ``"map"`` or ``"laplace"``: run :meth:`warm_start` with this method (and
            default settings) when the guide is built on its first call (``SVI.init``), so that SVI starts from it.
        **flow_kwargs: further arguments of the recipe (``count_bins``, ``bound``, ``hidden_factor``, ...).

    Example:
        >>> guide = AutoFlowGuide(model, "spline_iaf", num_transforms=2, count_bins=8)
        >>> guide.warm_start(data, method="laplace")   # optional: SVI.init then starts at the Laplace approximation
        >>> svi = SVI(model, guide, numpyro.optim.Adam(1e-2), Trace_ELBO())
        >>> result = svi.run(jax.random.PRNGKey(0), 2000, data)
        >>> guide.quantiles(result.params, [0.05, 0.5, 0.95])
        >>> Predictive(model, guide=guide, params=result.params, num_samples=100)(jax.random.PRNGKey(1), data)
        >>> neutra = NeuTraReparam(guide, result.params); nuts = NUTS(neutra.reparam(model))   # NeuTra HMC

    References: Kucukelbir et al. (2017), "Automatic Differentiation Variational Inference"; Kingma et al. (2016),
    "Improved Variational Inference with Inverse Autoregressive Flow"; Hoffman et al. (2019), "NeuTra-lizing Bad
    Geometry in Hamiltonian Monte Carlo Using Neural Transport".
    """

    #: Number of draws behind :meth:`median` and :meth:`quantiles` (fixed seed, so repeated calls agree).
    num_quantile_samples: int = _DEFAULT_NUM_QUANTILE_SAMPLES
    #: Largest latent size for which :meth:`warm_start` accepts ``method="laplace"`` (a D x D Hessian, its
    #: eigendecomposition and D² parameters in the guide).
    laplace_max_dim: int = _LAPLACE_MAX_DIM

    def __init__(
        self,
        model: Callable,
        flow: str | Callable[[int], Flow] = _DEFAULT_FLOW,
        *,
        prefix: str = "auto",
        num_transforms: int = _DEFAULT_NUM_TRANSFORMS,
        hidden_dims: Sequence[int] | None = None,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = _DEFAULT_INIT_SCALE,
        create_plates: Callable | None = None,
        warm_start: str | None = None,
        **flow_kwargs: Any,
    ) -> None:
        if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or not init_scale > MIN_SCALE:
            raise ValueError(
                f"init_scale must be a number > {MIN_SCALE} (the floor of the guide's scale), got {init_scale!r}"
            )
        if isinstance(num_transforms, bool) or not isinstance(num_transforms, int) or num_transforms < 1:
            raise ValueError(f"num_transforms must be a positive integer, got {num_transforms!r}")
        if warm_start is not None and warm_start not in _WARM_START_METHODS:
            raise ValueError(f"warm_start must be None, 'map' or 'laplace', got {warm_start!r}")
        if isinstance(flow, str):
            self._check_named_flow(flow, hidden_dims, flow_kwargs)
        elif callable(flow):
            if flow_kwargs or hidden_dims is not None:
                given = sorted(flow_kwargs) + (["hidden_dims"] if hidden_dims is not None else [])
                raise TypeError(
                    "hidden_dims and flow keyword arguments apply to named flows only; with a callable `flow`, build "
                    f"the flow with them inside the callable (got {given})"
                )
        else:
            raise TypeError(f"flow must be a name ({', '.join(FLOWS)}) or a callable latent_dim -> Flow, got {flow!r}")
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn, create_plates=create_plates)
        self._flow_spec = flow
        self._num_transforms = num_transforms
        self._hidden_dims = None if hidden_dims is None else tuple(int(h) for h in hidden_dims)
        self._flow_kwargs = dict(flow_kwargs)
        self._init_scale = float(init_scale)
        self._warm_start_option = warm_start
        self._flow: Flow | None = None

    # ------------------------------------------------------------------------------------------------- building
    @staticmethod
    def _check_named_flow(name: str, hidden_dims: Sequence[int] | None, flow_kwargs: dict[str, Any]) -> None:
        if name not in FLOWS:
            raise ValueError(f"unknown flow {name!r}: use one of {', '.join(repr(n) for n in FLOWS)}, "
                             "or pass a callable latent_dim -> numpyroflows Flow")
        recipe, _ = FLOWS[name]
        accepted = _recipe_arguments(recipe) - _SET_BY_GUIDE - {"num_transforms"}
        reserved = sorted(set(flow_kwargs) & _SET_BY_GUIDE)
        if reserved:
            raise TypeError(f"AutoFlowGuide sets {reserved} itself (input_dim = the latent size, no context, the "
                            "PRNG key from numpyro.prng_key()); remove them from the arguments")
        unknown = sorted(set(flow_kwargs) - accepted)
        if unknown:
            raise TypeError(f"flow {name!r} ({recipe.__name__}) takes no argument(s) {unknown}; it accepts "
                            f"{sorted(accepted | {'num_transforms'})}")
        if hidden_dims is not None and "hidden_dims" not in accepted:
            raise TypeError(f"flow {name!r} ({recipe.__name__}) takes no hidden_dims; set its size with "
                            f"{sorted(accepted)}")

    def _build_transform_flow(self, latent_dim: int, key: Array) -> Flow:
        """The flow ``T`` (before the final affine map) for a latent of size ``latent_dim``."""
        spec = self._flow_spec
        if not isinstance(spec, str):
            flow = spec(latent_dim)
            if not isinstance(flow, Flow):
                raise TypeError(f"the `flow` callable must return a numpyroflows Flow, got {type(flow).__name__}")
            if flow.input_dim != latent_dim or flow.context_dim != 0:
                raise ValueError(
                    f"the `flow` callable returned a flow with input_dim={flow.input_dim}, context_dim="
                    f"{flow.context_dim}; this model needs input_dim={latent_dim} and context_dim=0"
                )
            return flow
        if spec in _COUPLING and latent_dim < 2:
            raise ValueError(f"flow {spec!r} uses coupling layers, which need a latent of size >= 2, but this model "
                             "has a single unconstrained latent coordinate: use flow='iaf' or 'spline_iaf'")
        recipe, fixed = FLOWS[spec]
        kwargs = {**fixed, **self._flow_kwargs, "num_transforms": self._num_transforms}
        if "hidden_dims" in _recipe_arguments(recipe):
            width = max(_DEFAULT_HIDDEN_MIN, _DEFAULT_HIDDEN_PER_DIM * latent_dim)
            kwargs["hidden_dims"] = self._hidden_dims or (width,) * _DEFAULT_HIDDEN_LAYERS
        return recipe(latent_dim, key=key, **kwargs)

    def _seeded_trace(self, *args: Any, **kwargs: Any) -> dict:
        """One blocked run of the model from its prior (for error messages when NumPyro's own set-up fails)."""
        key = numpyro.prng_key()
        with handlers.block():
            return handlers.trace(handlers.seed(self.model, _SEED if key is None else key)).get_trace(
                *args, **kwargs)

    @staticmethod
    def _check_sites(trace: dict) -> None:
        """Raise an error that names the fix for a discrete latent site, a latent site inside a subsampled plate, or
        a model without latent sites."""
        full_sizes = {name: site["args"][0] for name, site in trace.items() if site["type"] == "plate"}
        latent = [site for site in trace.values()
                  if site["type"] == "sample" and not site["is_observed"]
                  and not site["infer"].get("is_auxiliary", False)]
        for site in latent:
            name, fn = site["name"], site["fn"]
            if fn.support.is_discrete:
                raise ValueError(
                    f"AutoFlowGuide: latent site {name!r} is discrete ({type(fn).__name__}); the guide covers "
                    "continuous latents only. Marginalise it: mark it with config_enumerate / infer={'enumerate': "
                    "'parallel'}, train with TraceEnum_ELBO, and build the flow guide on "
                    f"numpyro.handlers.block(numpyro.handlers.seed(model, 0), hide=[{name!r}]) (inside an "
                    "AutoGuideList if other parts need a guide); or make the variable continuous."
                )
            for frame in site["cond_indep_stack"]:
                full = full_sizes.get(frame.name)
                if full is not None and frame.size != full:
                    raise ValueError(
                        f"AutoFlowGuide: latent site {name!r} is inside plate {frame.name!r} subsampled to "
                        f"{frame.size} of {full}; a global flow over it would learn only the current "
                        "mini-batch. Use a per-datum or amortized guide for local variables: e.g. an AutoGuideList "
                        f"with AutoNormal on numpyro.handlers.block(model, expose=[{name!r}]) and AutoFlowGuide on "
                        f"numpyro.handlers.block(model, hide=[{name!r}]), or an amortized encoder; or do not "
                        "subsample the plate."
                    )
        if not latent:
            raise ValueError(
                "AutoFlowGuide: the model has no latent sample site (every numpyro.sample is observed); there is "
                "nothing to approximate: use an empty guide (def guide(*args, **kwargs): pass)"
            )

    def _prepare_prototype(self, *args: Any, **kwargs: Any) -> None:
        """NumPyro's prototype (sites, shapes, ``init_loc``, the potential function) and the guide's site checks; no
        flow yet."""
        try:
            super()._setup_prototype(*args, **kwargs)
        except Exception:
            try:  # NumPyro's own error may be obscure (e.g. for a discrete site): raise ours where we have one
                trace = self._seeded_trace(*args, **kwargs)
            except Exception:
                trace = None
            if trace is not None:
                self._check_sites(trace)
            raise
        # the prototype trace comes from NumPyro's initialisation (init_loc_fn), so that sites which cannot be
        # sampled (ImproperUniform) are fine
        self._check_sites(self.prototype_trace)

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        self._prepare_prototype(*args, **kwargs)
        key = numpyro.prng_key()
        key = jax.random.PRNGKey(_SEED) if key is None else key
        if self._warm_start_option is None:
            self._flow = self._build_flow(jnp.asarray(self._init_latent), key)
        else:
            try:
                self._warm_start(self._warm_start_option, _DEFAULT_WARM_START_STEPS, key)
            except Exception:
                self.prototype_trace = None  # so that the next call starts afresh
                raise

    def _build_flow(self, loc: Array, key: Array, factor: np.ndarray | None = None, exact: bool = False) -> Flow:
        """A fresh flow ``[*recipe layers, (LULinear,) DiagonalAffine]`` placed at ``loc`` with sd ``init_scale``
        (``factor is None``) or at ``N(loc, factor factorᵀ)`` (the LU layer is added). ``exact``: the recipe layers
        start at exactly the identity (:func:`_zero_conditioner_outputs`), as the warm start needs."""
        k_flow, k_init = jax.random.split(key)
        transform_flow = self._build_transform_flow(self.latent_dim, k_flow)
        if exact:
            transform_flow = Flow(_zero_conditioner_outputs(transform_flow.transforms), base=transform_flow.base)
        final = self._final_layers(transform_flow, loc, k_init, factor)
        return Flow([*transform_flow.transforms, *final], base=transform_flow.base)

    def _final_layers(self, transform_flow: Flow, init_loc: Array, key: Array,
                      factor: np.ndarray | None = None) -> list:
        """The final layers, set so that the draws of ``u`` have mean ``init_loc`` and sd ``init_scale`` per
        coordinate (``[DiagonalAffine]``), or mean ``init_loc`` and covariance ``C Cᵀ`` for ``factor = C``
        (``[LULinear, DiagonalAffine]``).

        With the standard normal base, ``T(z)`` is measured on antithetic draws ``±z``: ``m = mean T(z)``,
        ``s = sd T(z) / sd z`` (exact for an affine ``T``, so a flow at the identity gets ``shift = init_loc``,
        ``scale = init_scale`` up to round-off); with a custom base, ``m`` and ``s = sd T(z)`` come from plain draws.
        Then ``shift = init_loc - init_scale m / s``, ``scale = init_scale / s``; or the LU weight
        ``diag(1/s') C diag(1/s)`` (identity permutation), LU shift ``-W m`` and affine ``shift = init_loc``,
        ``scale = s'`` (see :func:`_lu_placement`)."""
        d = self.latent_dim
        n = _DEFAULT_NUM_INIT_SAMPLES // 2
        dtype = init_loc.dtype
        if transform_flow.base is None:
            z = jax.random.normal(key, (n, d), dtype)
            z = jnp.concatenate([z, -z])
        else:
            z = jnp.asarray(transform_flow.base.sample(key, (2 * n,)), dtype)
        x = jax.lax.stop_gradient(_forward(transform_flow.transforms, z).astype(dtype))
        mean, sd = x.mean(0), x.std(0)
        if transform_flow.base is None:
            sd = sd / z.std(0)
        if not isinstance(mean, jax.core.Tracer) and not bool(
                jnp.all(jnp.isfinite(mean)) & jnp.all(jnp.isfinite(sd)) & jnp.all(sd > 0)):
            raise ValueError("the flow's draws at initialisation are not finite or are constant in some coordinate; "
                             "check the flow (a callable `flow` must return an invertible flow)")
        affine = DiagonalAffine(d)
        params = dict(affine.params)
        if factor is None:
            scale = self._init_scale / sd
            params["head.shift"] = (init_loc - scale * mean).astype(params["head.shift"].dtype)
            params["head.raw_scale"] = affine_scale_inverse(scale).astype(params["head.raw_scale"].dtype)
            return [affine.with_params(params)]
        packed, diag, shift, outer, clamped = _lu_placement(factor, np.asarray(mean), np.asarray(sd))
        if clamped:
            warnings.warn(f"AutoFlowGuide.warm_start: {clamped} conditional posterior sd(s) are below what the guide's "
                          f"scales can represent ({_LAYER_FLOOR ** 2:.0e} in unconstrained space); they were raised to "
                          "it", RuntimeWarning, stacklevel=4)
        lu = LULinear(d, permutation="identity")
        lu_params = dict(lu.params)
        pdt = lu_params["head.shift"].dtype
        lu_params.update({"head.packed": jnp.asarray(packed, pdt),
                          "head.raw_diag": affine_scale_inverse(jnp.asarray(diag)).astype(pdt),
                          "head.shift": jnp.asarray(shift, pdt)})
        params["head.shift"] = jnp.asarray(init_loc, params["head.shift"].dtype)
        params["head.raw_scale"] = affine_scale_inverse(jnp.asarray(outer)).astype(params["head.raw_scale"].dtype)
        return [lu.with_params(lu_params), affine.with_params(params)]

    # ------------------------------------------------------------------------------------------------- warm start
    def warm_start(self, *args: Any, method: str = "laplace", num_steps: int = _DEFAULT_WARM_START_STEPS,
                   rng_key: Array | None = None, **kwargs: Any) -> WarmStart:
        """Place the guide at the mode (``"map"``) or the Laplace approximation (``"laplace"``) of the posterior.

        Maximises ``log p(u)`` (NumPyro's potential energy with its sign flipped: the model's log joint at
        ``x = biject_to(support)(u)`` plus ``log|det ∂x/∂u|``, exactly the density the guide approximates) with
        optax's L-BFGS and a zoom (strong Wolfe) line search, compiled as one loop, from the ``init_loc_fn`` point.
        Then the flow is rebuilt with fresh layers at exactly the identity (their conditioners' output weights start
        at zero instead of ``±1e-3``) and its final layers are set:

        * ``"map"``: the affine shift to the mode; the scale stays ``init_scale`` (no second derivatives, so it
          suits any latent size; use ``"laplace"`` for a covariance);
        * ``"laplace"``: ``H`` = ``jax.hessian`` of ``-log p(u)`` at the mode, ``Σ = H⁻¹`` (eigenvalues of ``H`` that
          are not positive are raised to ``1/init_scale²``, with a warning), and the chain becomes
          ``T -> LULinear (initialised to chol(Σ), identity permutation) -> DiagonalAffine (shift at the mode)``:
          with identity-start flows (all but bnaf, radial, sylvester) the guide at zero SVI steps is exactly
          ``N(mode, Σ)``. The LU layer adds ``D²`` parameters and stays trainable; ``D`` above
          :attr:`laplace_max_dim` (2000) is refused.

        How the result reaches NumPyro: the guide keeps the warm-started flow as the initial values of its
        ``numpyro.param`` sites, so a following ``svi.init`` / ``svi.run`` starts from it. If SVI was already
        initialised, pass ``init_params=result.params`` to ``svi.init``/``svi.run`` (the parameter layout of
        ``"laplace"`` differs from the default one, so an old SVI state cannot be continued). A non-finite ``log p``
        stops the search at the best point found, with a warning. Nothing is lost: unless the search converged to a
        clean mode (``"laplace"`` with a positive-definite Hessian, kept as is), the placed guide's ELBO (64 draws under
        a fixed key) is compared with the default start's ``N(init_loc, init_scale²)``, and where it is lower or not
        finite (a funnel has no useful mode) the guide keeps the default start, with a warning. The constructor option
        ``warm_start=`` runs it in ``SVI.init`` instead. Run it outside ``jax.jit`` (it returns host values).

        Args:
            *args, **kwargs: the model's arguments (``method``, ``num_steps`` and ``rng_key`` are taken by this method).
            method: ``"laplace"`` (default) or ``"map"``.
            num_steps: maximum number of L-BFGS iterations.
            rng_key: PRNG key for ``init_loc_fn`` (if the guide is not built yet) and the flow's initial parameters;
                ``None``: ``PRNGKey(0)``.

        Returns:
            a :class:`WarmStart` (mode, Cholesky factor of ``Σ``, ``log p`` at the mode, iterations, convergence,
            ``params``).

        Example:
            >>> guide = AutoFlowGuide(model)
            >>> ws = guide.warm_start(x, y, method="laplace")
            >>> svi = SVI(model, guide, numpyro.optim.Adam(1e-2), Trace_ELBO())
            >>> result = svi.run(jax.random.PRNGKey(0), 1000, x, y)   # starts at N(mode, Σ)

        Reference: MacKay (2003), "Information Theory, Inference, and Learning Algorithms", ch. 27 (Laplace's
        method); Liu & Nocedal (1989), "On the limited memory BFGS method for large scale optimization".
        """
        if method not in _WARM_START_METHODS:
            raise ValueError(f"unknown warm start method {method!r}: use 'laplace' or 'map'")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"num_steps must be a non-negative integer, got {num_steps!r}")
        key = jax.random.PRNGKey(_SEED) if rng_key is None else rng_key
        potential = None
        if self.prototype_trace is None:
            k_proto, key = jax.random.split(key)
            with handlers.block(), handlers.seed(rng_seed=k_proto):
                self._prepare_prototype(*args, **kwargs)
        elif args or kwargs:  # the prototype's potential was built with the first call's arguments: use these
            potential = self._potential_fn_gen(*args, **kwargs)
        try:
            result = self._warm_start(method, num_steps, key, potential)
        finally:
            if self._flow is None:  # failed before a flow existed: keep the guide usable with its default start
                self._flow = self._build_flow(jnp.asarray(self._init_latent), key)
        return result

    def _warm_start(self, method: str, num_steps: int, key: Array, potential: Callable | None = None) -> WarmStart:
        """Search, Hessian and placement (``potential``: NumPyro's potential energy of a dict of unconstrained
        values; default that of the prototype); sets ``self._flow``."""
        start = time.perf_counter()
        d = self.latent_dim
        if method == "laplace" and d > self.laplace_max_dim:
            raise ValueError(f"warm_start(method='laplace') forms the {d} x {d} Hessian and adds {d}² parameters; "
                             f"this model has D = {d} > laplace_max_dim = {self.laplace_max_dim}: use method='map' "
                             "(the mode, no Hessian), or raise AutoFlowGuide.laplace_max_dim if you have the memory")
        potential, unpack = potential or self._potential_fn, self._unpack_latent

        def fn(u: Array) -> Array:
            with handlers.block():  # invisible to the handlers around the guide (SVI.init's trace and seed)
                return potential(unpack(u))

        u0 = jnp.asarray(self._init_latent)
        loc, value, iterations, code = jax.jit(lambda u: _minimize_lbfgs(fn, u, num_steps))(u0)
        iterations, code = int(iterations), int(code)
        converged = code in (_GRAD_SMALL, _NO_DECREASE)
        if code == _GRAD_SMALL:
            message = f"converged after {iterations} iterations (gradient below tolerance)"
            if iterations == 0:
                message = "the starting point is already a stationary point"
        elif code == _NO_DECREASE:
            message = f"converged after {iterations} iterations (no further decrease)"
        elif code == _NOT_FINITE:
            message = (f"stopped at iteration {iterations}: log p(u) or its gradient is not finite at the new "
                       f"point; kept the best point found (log p = {-float(value):.6g})")
            warnings.warn(f"AutoFlowGuide.warm_start: {message}. Check the model's supports and priors, or start "
                          "from a better point with init_loc_fn=init_to_value(...)", RuntimeWarning, stacklevel=3)
        else:
            message = f"stopped after num_steps={num_steps} iterations"
        factor, floored = None, 0
        if method == "laplace":
            hess = np.asarray(jax.jit(jax.hessian(fn))(loc), np.float64)
            failure = None if np.all(np.isfinite(hess)) else "is not finite"
            if failure is None:
                try:
                    factor, floored = _laplace_factor(hess, self._init_scale)
                except np.linalg.LinAlgError:
                    failure = "has no Cholesky factor even with its eigenvalues floored"
            if failure is not None:
                method, factor = "map", None
                message += f"; the Hessian at the mode {failure}: fell back to method='map'"
                warnings.warn(f"AutoFlowGuide.warm_start: {message}", RuntimeWarning, stacklevel=3)
            elif floored:
                message += (f"; {floored} eigenvalue(s) of the Hessian were not (clearly) positive and were set to "
                            f"1/init_scale² = {1 / self._init_scale ** 2:.3g}")
                warnings.warn(f"AutoFlowGuide.warm_start: the Hessian of -log p at the mode has {floored} "
                              "eigenvalue(s) that are not clearly positive (the search did not reach a maximum, or the "
                              "posterior is flat in some direction); the guide uses sd init_scale in those directions",
                              RuntimeWarning, stacklevel=3)
        warm, default = self._build_flow(loc, key, factor, exact=True), self._build_flow(u0, key)
        elbo_warm, elbo_default = (_start_elbo(f, fn) for f in (warm, default))
        self._flow = flow = warm
        # A clean Laplace start (the search converged, the Hessian positive definite) is kept whatever its ELBO: a
        # start's ELBO does not predict where SVI ends (a Laplace start wider than N(init_loc, init_scale²) scores
        # lower, then trains to a better fit: banana, eight schools), and the check is for modes that are not real
        clean = method == "laplace" and converged and not floored
        if not math.isfinite(elbo_warm) or (not clean and not elbo_warm >= elbo_default):
            self._flow, flow, method, factor = default, default, "none", None
            message += (f"; the warm start's ELBO ({elbo_warm:.6g}) is below the default start's ({elbo_default:.6g}),"
                        " so the guide keeps its default start N(init_loc, init_scale²)")
            warnings.warn(f"AutoFlowGuide.warm_start: {message}. A posterior without a reachable mode (a funnel, or "
                          "log p unbounded along some direction) has no useful Laplace or MAP start; "
                          "reparameterize the model or choose init_loc_fn", RuntimeWarning, stacklevel=3)
        name = f"{self.prefix}_flow"
        return WarmStart(method=method, loc=loc, scale_tril=None if factor is None else jnp.asarray(factor, loc.dtype),
                         log_density=-float(value), num_iterations=iterations, converged=converged, message=message,
                         params={f"{name}${k}": v for k, v in flow.params.items()},
                         time_s=time.perf_counter() - start)

    # ------------------------------------------------------------------------------------------------- posterior
    def _require_flow(self) -> Flow:
        if self._flow is None:
            raise RuntimeError("AutoFlowGuide is built on its first call: run SVI.init (or call the guide under "
                               "numpyro.handlers.seed with the model's arguments) first")
        return self._flow

    def _trained_flow(self, params: dict[str, Array]) -> Flow:
        """The guide's flow with the values of ``params`` (from ``SVI.get_params`` / ``svi_result.params``)."""
        flow = self._require_flow()
        name = f"{self.prefix}_flow"
        missing = [k for k in flow.params if f"{name}${k}" not in params]
        if missing:
            raise KeyError(f"params lack the guide's parameters {name}${missing[0]} (and {len(missing) - 1} more): "
                           "pass the params of the SVI run that trained this guide (svi.get_params(state))")
        return flow.with_params({k: params[f"{name}${k}"] for k in flow.params})

    def _get_posterior(self) -> FlowDistribution:
        flow = module(f"{self.prefix}_flow", self._require_flow())
        return _GuideFlowDistribution(flow)

    def get_base_dist(self) -> dist.Distribution:
        """The standard normal base ``N(0, I_D)`` (event dim 1), or the custom base of a callable flow."""
        flow = self._require_flow()
        if flow.base is not None:
            return flow.base
        return dist.Normal(jnp.zeros(self.latent_dim), 1.0).to_event(1)

    def get_transform(self, params: dict[str, Array]) -> FlowChain:
        """The whole map ``u = loc + scale ⊙ T(z)`` with the values of ``params``, as a NumPyro ``Transform`` (exact
        inverse), as ``NeuTraReparam`` needs."""
        return self._trained_flow(params).transform()

    def get_posterior(self, params: dict[str, Array]) -> FlowDistribution:
        """The guide's distribution over the unconstrained latent vector ``u`` (a :class:`FlowDistribution`)."""
        return self._trained_flow(params)()

    # ------------------------------------------------------------------------------------------------- summaries
    def quantiles(self, params: dict[str, Array], quantiles: Sequence[float] | Array) -> dict[str, Array]:
        """Posterior quantiles of every latent site: ``{site: array of shape (len(quantiles),) + site shape}``.

        Coordinate-wise quantiles of ``num_quantile_samples`` draws of ``u`` (fixed seed), mapped to each site's
        support; for elementwise constraints this commutes with the quantile.

        Example:
            >>> guide.quantiles(svi_result.params, [0.05, 0.5, 0.95])["scale"]
        """
        q = jnp.reshape(jnp.asarray(quantiles, dtype=jnp.result_type(float)), (-1,))
        if not bool(jnp.all((q >= 0) & (q <= 1))):
            raise ValueError(f"quantiles must lie in [0, 1], got {q.tolist()}")
        flow = self._trained_flow(params)
        n = int(self.num_quantile_samples)
        key = jax.random.PRNGKey(_SEED)
        if flow.base is None:
            z = jax.random.normal(key, (n, self.latent_dim), flow.transforms[-1].params["head.shift"].dtype)
        else:
            z = flow.base.sample(key, (n,))
        u = _forward(flow.transforms, z)
        latent = jnp.quantile(u, q.astype(u.dtype), axis=0)
        return self._unpack_and_constrain(latent, params)

    def median(self, params: dict[str, Array]) -> dict[str, Array]:
        """Posterior median of every latent site (the 0.5 quantile of :meth:`quantiles`), ``{site: value}``."""
        return {name: v[0] for name, v in self.quantiles(params, [0.5]).items()}
