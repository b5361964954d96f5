"""``AutoFlowGuide``: a normalizing-flow posterior over all continuous latent sites of a NumPyro model.

:class:`AutoFlowGuide` is an ``AutoContinuous`` guide: it trains with NumPyro's ``SVI`` and serves ``Predictive``,
``NeuTraReparam``, :meth:`~AutoFlowGuide.median` and :meth:`~AutoFlowGuide.quantiles`, with its flow's parameters as
``numpyro.param`` sites. The backend-free parts (defaults, the flow table, argument and site checks, messages, the
Laplace algebra) are in :mod:`flowcommon.guide`; the mode search and the Hessian of the warm start in
:mod:`numpyroflows.infer.warm_start`. Names, arguments, defaults and parameter layout are those of pyroflows'
``AutoFlowGuide``.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.infer.autoguide import AutoContinuous
from numpyro.infer.initialization import init_to_median

from flowcommon import guide as common
from flowcommon.guide import WarmStart

from ..flows import recipes
from ..flows.bases import TrainableBase
from ..flows.core import Flow, FlowDistribution
from ..functional.affine import MIN_SCALE, affine_scale_inverse
from ..io import module
from ..nn.made import made_zero_output
from ..nn.mlp import mlp_zero_output
from ..transforms.autoregressive import AutoregressiveTransform
from ..transforms.base import FlowChain, chain_forward
from ..transforms.coupling import CouplingTransform
from ..transforms.linear import DiagonalAffine, LowerCholeskyAffine
from .posterior import PosteriorDraws
from .warm_start import base_draws, find_mode, neg_log_density, start_elbo

Array = jax.Array

#: name -> (recipe, fixed keyword arguments): the guide's named flows (:data:`flowcommon.guide.FLOW_RECIPES`).
FLOWS: dict[str, tuple[type[Flow], dict[str, Any]]] = common.flow_table(recipes)
_SET_BY_GUIDE = ("input_dim", "context_dim", "key")


@jax.jit
def _forward(transforms: tuple, z: Array) -> Array:
    """``T(z)`` through ``transforms`` (compiled once per flow structure instead of op by op)."""
    return chain_forward(transforms, z, None)[0]


@functools.partial(jax.jit, static_argnums=2)
def _sample_and_log_prob(d: FlowDistribution, key: Array, sample_shape: tuple) -> tuple[Array, Array]:
    """``FlowDistribution.sample_and_log_prob``, compiled as one program (also when called eagerly)."""
    return FlowDistribution.sample_and_log_prob(d, key, sample_shape)


class _GuideFlowDistribution(FlowDistribution):
    """A :class:`FlowDistribution` whose draws (with their log-density, handed to NumPyro's ELBO as intermediates
    by :meth:`FlowDistribution.sample_with_intermediates`) run as one compiled program, also when called eagerly
    (``Predictive``, ``sample_posterior``)."""

    def sample_and_log_prob(self, key: Array, sample_shape: tuple = ()) -> tuple[Array, Array]:
        return _sample_and_log_prob(self, key, tuple(sample_shape))

    def sample(self, key: Array, sample_shape: tuple = ()) -> Array:
        return self.sample_and_log_prob(key, sample_shape)[0]


class PathFlowDistribution(_GuideFlowDistribution):
    """A guide flow distribution whose ``log_prob`` holds the flow's parameters fixed: ``log q_θ̄(x)``, with ``θ̄``
    the current values behind ``lax.stop_gradient``, differentiable in ``x`` only (by the exact inverse pass; the
    density carried in ``intermediates`` is not used).

    Scoring a reparameterized draw ``x = T_θ(z)`` this way gives the path gradient of the ELBO ("sticking the
    landing", Roeder et al. 2017; for normalizing flows, Vaitl et al. 2022, "Gradients should stay on path"): the
    score term ``∇_θ log q_θ(x)`` at fixed ``x``, whose expectation is zero, is dropped, so the gradient's variance
    vanishes where ``q`` equals the posterior. The value of ``log_prob`` is unchanged."""

    def log_prob(self, value: Array, intermediates: list | None = None) -> Array:
        return FlowDistribution(jax.lax.stop_gradient(self.flow), self.context).log_prob(value)


def _check_sites(trace: dict) -> None:
    """Raise an error that names the fix for a discrete latent site, a latent site inside a subsampled plate, or a
    model without latent sites."""
    full_sizes = {name: site["args"][0] for name, site in trace.items() if site["type"] == "plate"}
    latent = [site for site in trace.values() if site["type"] == "sample" and not site["is_observed"]
              and not site["infer"].get("is_auxiliary", False)]
    for site in latent:
        name, fn = site["name"], site["fn"]
        if fn.support.is_discrete:
            raise ValueError(common.discrete_site_message(name, type(fn).__name__, "numpyro"))
        for frame in site["cond_indep_stack"]:
            full = full_sizes.get(frame.name)
            if full is not None and frame.size != full:
                plates = [f.name for f in site["cond_indep_stack"]]
                raise ValueError(common.subsampled_site_message(name, frame.name, frame.size, full, "numpyro", plates))
    if not latent:
        raise ValueError(common.no_latent_message("numpyro"))


def _recipe_flow(spec: str | Callable[[int], Flow], latent_dim: int, key: Array, num_transforms: int,
                 hidden_dims: Sequence[int] | None, flow_kwargs: dict[str, Any]) -> Flow:
    """The guide's flow ``T`` (before the final layers) for a latent of size ``latent_dim``: the named recipe of
    :data:`FLOWS` with the guide's settings, or what the ``spec`` callable returns (checked)."""
    if not isinstance(spec, str):
        flow = spec(latent_dim)
        common.check_flow_result(flow, Flow, getattr(flow, "input_dim", None), getattr(flow, "context_dim", None),
                                 latent_dim, "numpyroflows")
        return flow
    recipe, kwargs = common.recipe_kwargs(spec, FLOWS, latent_dim, num_transforms, hidden_dims, flow_kwargs)
    return recipe(latent_dim, key=key, **kwargs)


def _zero_conditioners(transforms: Sequence) -> list:
    """The transforms with the output weights of their conditioners zeroed (:func:`made_zero_output` for the MADE of
    autoregressive layers, :func:`mlp_zero_output` for the MLP of coupling layers), so that each such layer computes
    exactly its output bias: the transformer's identity parameters in every recipe that starts at the identity."""
    out = []
    for t in transforms:
        if isinstance(t, AutoregressiveTransform):
            t = t.with_params(made_zero_output(t.params, input_dim=t.input_dim, num_params=t.transformer.num_params,
                                               hidden_dims=t.hidden_dims, prefix="made."))
        elif isinstance(t, CouplingTransform):
            t = t.with_params(mlp_zero_output(t.params, prefix="net."))
        out.append(t)
    return out


def _affine(d: int, loc: Array, scale: Array) -> DiagonalAffine:
    """``DiagonalAffine(d, loc=loc, scale=scale)``. A guide built inside a traced function (``Predictive`` maps over
    its draws) has traced values, which the constructor's NumPy checks cannot take: they are set as parameters."""
    if not isinstance(loc, jax.core.Tracer) and not isinstance(scale, jax.core.Tracer):
        return DiagonalAffine(d, loc=np.asarray(loc), scale=np.asarray(jnp.maximum(scale, MIN_SCALE + 1e-6)))
    affine = DiagonalAffine(d)
    dtype = affine.params["head.shift"].dtype
    return affine.with_params({**affine.params, "head.shift": loc.astype(dtype),
                               "head.raw_scale": affine_scale_inverse(scale).astype(dtype)})


def _final_layers(transform_flow: Flow, loc: Array, key: Array, init_scale: float, whiten: bool,
                  factor: np.ndarray | None = None) -> list:
    """The layers after the flow: ``[DiagonalAffine]``, then ``LowerCholeskyAffine`` where ``whiten``.

    Without ``factor`` the draws of ``u`` get mean ``loc`` and sd ``init_scale`` per coordinate (the affine map in
    the units of ``u``; the fixed layer, if any, is the identity). With a lower-triangular ``factor = C`` (a Laplace
    start) the affine map standardizes ``T(z)`` to mean 0 and sd 1 and the fixed layer maps it to ``loc + C x``: the
    draws have mean ``loc`` and covariance ``C Cᵀ`` for ``T`` at the identity, and the trained layers act in
    coordinates whitened by the Laplace approximation.

    With the standard normal base, ``T(z)`` is measured on antithetic draws ``±z`` and its sd divided by that of ``z``
    (exact for an affine ``T``, so a flow at the identity gets ``shift = loc``, ``scale = init_scale``); with a
    custom base, from plain draws."""
    d, n, dtype = loc.shape[0], common.NUM_INIT_SAMPLES // 2, loc.dtype
    if transform_flow.base is None:
        z = jax.random.normal(key, (n, d), dtype)
        z = jnp.concatenate([z, -z])
    else:
        z = jnp.asarray(transform_flow.base.sample(key, (2 * n,)), dtype)
    x = jax.lax.stop_gradient(_forward(transform_flow.transforms, z).astype(dtype))
    mean, sd = x.mean(0), x.std(0) / (z.std(0) if transform_flow.base is None else 1.0)
    if not isinstance(mean, jax.core.Tracer) and not bool(
            jnp.all(jnp.isfinite(mean)) & jnp.all(jnp.isfinite(sd)) & jnp.all(sd > 0)):
        raise ValueError("the flow's draws at initialisation are not finite or are constant in some coordinate; "
                         "check the flow (a callable `flow` must return an invertible flow)")
    target_loc, target_scale = (loc, init_scale) if factor is None else (jnp.zeros_like(loc), 1.0)
    scale = target_scale / sd
    final = [_affine(d, target_loc - scale * mean, scale)]
    if whiten:
        fixed = LowerCholeskyAffine(d, dtype=final[0].params["head.shift"].dtype)
        final.append(fixed if factor is None else fixed.with_values(np.asarray(loc), factor))
    return final


class AutoFlowGuide(PosteriorDraws, AutoContinuous):
    """A NumPyro autoguide whose posterior over the unconstrained latent vector is a normalizing flow.

    All continuous latent sites are mapped to unconstrained space with ``biject_to(support).inv`` and concatenated
    into ``u ∈ R^D`` (the log-Jacobian of each constraint enters exactly, as in every ``AutoContinuous`` guide). The
    posterior over ``u`` is ``u = m + C (a + s ⊙ T(z))``, ``z ~ N(0, I_D)``: ``T`` is the chosen flow, ``(a, s)`` a
    learnable :class:`~numpyroflows.transforms.linear.DiagonalAffine`, and ``(m, C)`` a fixed
    :class:`~numpyroflows.transforms.linear.LowerCholeskyAffine` (present when ``D <= laplace_max_dim``; its values are
    ``numpyro.param`` sites behind ``stop_gradient``, so saved params hold the whole guide and optimizers leave them
    alone). The whole chain is one :class:`~numpyroflows.flows.Flow`, and the ELBO scores the guide's own sample from
    its forward pass (no inverse pass). The flow's parameters are registered with ``numpyro.param`` under
    ``f"{prefix}_flow$<name>"`` (names as in :attr:`numpyroflows.flows.Flow.params`); their initial values are drawn
    with a key from ``numpyro.prng_key()`` on the guide's first call (``SVI.init``). Saved ``svi_result.params`` serve
    a new guide of the same settings (``SVI.init(..., init_params=params)``, ``Predictive(..., params=params)``, then
    :meth:`median`).

    Start (``warm_start="auto"``, the default): on the guide's first call (``SVI.init``, also inside ``SVI.run``)
    L-BFGS finds the mode of ``log p(u)`` from the ``init_loc_fn`` point, and the guide starts at the Laplace
    approximation ``N(mode, H⁻¹)``: ``m`` the mode, ``C`` the Cholesky factor of ``H⁻¹``, the flow and the affine map
    at the identity. The trained layers then act in coordinates whitened by the Laplace approximation, so a learning
    rate means a step in units of the posterior's own scale on every model (an Adam step of 5e-3 moves a location by
    0.005 posterior sds, not by 5e-3 whatever its sd), and SVI starts where ``AutoLaplaceApproximation`` ends. Where
    ``D > laplace_max_dim`` the start is the mode (``"map"``). Where the search finds no clean mode (a funnel), or the
    Hessian is not positive definite, the warm start falls back (to the mode, or to the default start below) with a
    warning; see :meth:`warm_start`. ``warm_start=None`` skips the search: the draws of ``u`` start with mean
    ``init_loc`` and sd ``init_scale`` per coordinate, ``C = I``, and ``(a, s)`` in the units of ``u`` (for the recipes
    that start at the identity, all but bnaf, radial and sylvester, ``a = init_loc``, ``s = init_scale``: the start
    of ``AutoNormal``).

    Choosing the flow: affine ``"iaf"`` (the default) samples and scores in one pass per layer and can make the scale
    of one coordinate depend on others, which funnel-shaped posteriors need. The spline flows (``"spline_iaf"``,
    ``"nsf"``, ``"spline_coupling"``) map ``[-bound, bound]`` onto itself (identity outside), so they reshape
    marginals but cannot stretch a coordinate by a factor that depends on another one (Neal's funnel shows the
    difference). ``"maf"`` and ``"nsf"`` sample in ``D`` passes per layer.

    Args:
        model: a NumPyro model with static structure and continuous latent sites.
        flow: a name from :data:`FLOWS` or a callable ``latent_dim -> Flow`` (a numpyroflows flow with
            ``input_dim = latent_dim`` and ``context_dim = 0``).
        prefix: prefix of the guide's parameter and auxiliary site names.
        num_transforms: number of flow layers (named flows only).
        hidden_dims: hidden widths of the flow's networks; ``None``: two layers of ``max(32, min(4 D, 256))`` units
            (:func:`flowcommon.guide.default_hidden_dims`). Passed only to recipes that take it.
        init_loc_fn: per-site initialisation (``numpyro.infer.initialization``), e.g. ``init_to_value``.
        init_scale: initial standard deviation of each unconstrained coordinate (> 1e-3).
        create_plates: as in NumPyro's ``AutoGuide``.
        warm_start: ``"auto"`` (default), ``"laplace"``, ``"map"`` or ``None``: run :meth:`warm_start` with this
            method when the guide is built on its first call (``SVI.init``), so that SVI starts from it; ``None``:
            start at ``N(init_loc, init_scale²)`` without a search.
        stick_the_landing: score the guide's own draws with its parameters held fixed (:class:`PathFlowDistribution`),
            so that ``Trace_ELBO`` computes the path gradient, whose variance vanishes as the guide approaches the
            posterior; the price is the flow's inverse pass in every step (``D`` network passes per autoregressive
            layer of an IAF).
        **flow_kwargs: further arguments of the recipe (``count_bins``, ``bound``, ``hidden_factor``, ...).

    Example:
        >>> guide = AutoFlowGuide(model, "spline_iaf", num_transforms=2, count_bins=8)
        >>> svi = SVI(model, guide, numpyro.optim.ClippedAdam(5e-3), Trace_ELBO())
        >>> result = svi.run(jax.random.PRNGKey(0), 5000, data)   # starts at the Laplace approximation
        >>> guide.quantiles(result.params, [0.05, 0.5, 0.95])
        >>> Predictive(model, guide=guide, params=result.params, num_samples=100)(jax.random.PRNGKey(1), data)
        >>> neutra = NeuTraReparam(guide, result.params); nuts = NUTS(neutra.reparam(model))   # NeuTra HMC

    References: Kucukelbir et al. (2017), "Automatic Differentiation Variational Inference"; Kingma et al. (2016),
    "Improved Variational Inference with Inverse Autoregressive Flow"; Hoffman et al. (2019), "NeuTra-lizing Bad
    Geometry in Hamiltonian Monte Carlo Using Neural Transport".
    """

    #: Number of draws behind :meth:`median` and :meth:`quantiles` (fixed seed, so repeated calls agree).
    num_quantile_samples: int = common.NUM_QUANTILE_SAMPLES
    #: Largest latent size for which :meth:`warm_start` accepts ``method="laplace"`` (a D x D Hessian, its
    #: eigendecomposition, and the D x D fixed factor the guide then holds; no trainable D² parameters).
    laplace_max_dim: int = common.LAPLACE_MAX_DIM

    def __init__(self, model: Callable, flow: str | Callable[[int], Flow] = common.DEFAULT_FLOW, *,
                 prefix: str = "auto", num_transforms: int = common.DEFAULT_NUM_TRANSFORMS,
                 hidden_dims: Sequence[int] | None = None, init_loc_fn: Callable = init_to_median,
                 init_scale: float = common.DEFAULT_INIT_SCALE, create_plates: Callable | None = None,
                 warm_start: str | None = common.DEFAULT_WARM_START, stick_the_landing: bool = False,
                 **flow_kwargs: Any) -> None:
        self._init_scale = common.check_init_scale(init_scale, MIN_SCALE)
        common.check_positive_int(num_transforms, "num_transforms")
        common.check_warm_start(warm_start, option=True)
        common.check_flow_choice(flow, FLOWS, hidden_dims, flow_kwargs, _SET_BY_GUIDE, "numpyroflows")
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn, create_plates=create_plates)
        self._flow_spec, self._num_transforms, self._flow_kwargs = flow, num_transforms, dict(flow_kwargs)
        self._hidden_dims = None if hidden_dims is None else tuple(int(h) for h in hidden_dims)
        self._warm_start_option = warm_start
        self.stick_the_landing = bool(stick_the_landing)
        self._flow: Flow | None = None  # built with the prototype, on the first call

    # ------------------------------------------------------------------------------------------------- building
    @contextlib.contextmanager
    def _building(self) -> Iterator[None]:
        """Where the block does not finish (an error, or ``KeyboardInterrupt``) before a flow exists, the guide goes
        back to unbuilt, so that the next call (``SVI.init``) builds it afresh instead of running half-built."""
        try:
            yield
        except BaseException:
            if self._flow is None:
                self.prototype_trace = None
            raise

    def _prepare_prototype(self, *args: Any, **kwargs: Any) -> None:
        """NumPyro's prototype (sites, shapes, ``init_loc``, the potential function) and the guide's site checks; no
        flow yet. The prototype trace comes from NumPyro's initialisation (``init_loc_fn``), so that sites which
        cannot be sampled (``ImproperUniform``) are fine."""
        try:
            super()._setup_prototype(*args, **kwargs)
        except Exception:
            try:  # NumPyro's own error may be obscure (e.g. for a discrete site): raise ours where we have one
                key = numpyro.prng_key()
                with handlers.block():
                    trace = handlers.trace(handlers.seed(self.model, common.SEED if key is None else key)).get_trace(
                        *args, **kwargs)
            except Exception:
                trace = None
            if trace is not None:
                _check_sites(trace)
            raise
        _check_sites(self.prototype_trace)

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        with self._building():  # every attribute is in place, or the guide is unbuilt
            self._prepare_prototype(*args, **kwargs)
            key = numpyro.prng_key()
            key = jax.random.PRNGKey(common.SEED) if key is None else key
            option, flow = self._warm_start_option, None
            # inside a trace (Predictive building a new guide for saved params) there is no search to run: the
            # guide takes its default start, in the same layout, and the params' values replace it (fixed layer too)
            if option is not None and not isinstance(self._init_latent, jax.core.Tracer):
                try:
                    flow, _ = self._warm_start(option, common.DEFAULT_WARM_START_STEPS, key)
                except common.FlatDensityError:
                    if option != "auto":
                        raise
                    warnings.warn(common.FLAT_DENSITY_FALLBACK, RuntimeWarning, stacklevel=4)
            self._flow = self._build_flow(jnp.asarray(self._init_latent), key) if flow is None else flow

    def _build_flow(self, loc: Array, key: Array, factor: np.ndarray | None = None, exact: bool = False) -> Flow:
        """A fresh flow ``[*recipe layers, DiagonalAffine(, LowerCholeskyAffine)]`` placed at ``loc`` with sd
        ``init_scale`` (``factor is None``) or at ``N(loc, factor factorᵀ)``. The fixed layer is there whenever the
        latent fits :attr:`laplace_max_dim` (the identity without a Laplace start), so that the parameter layout does
        not depend on how a warm start ended. ``exact``: the recipe layers start at exactly the identity, as the warm
        start needs."""
        k_flow, k_init = jax.random.split(key)
        layers = _recipe_flow(self._flow_spec, self.latent_dim, k_flow, self._num_transforms, self._hidden_dims,
                              self._flow_kwargs)
        if exact:
            layers = Flow(_zero_conditioners(layers.transforms), base=layers.base)
        whiten = self.latent_dim <= self.laplace_max_dim
        final = _final_layers(layers, loc, k_init, self._init_scale, whiten, factor)
        return Flow([*layers.transforms, *final], base=layers.base)

    # ------------------------------------------------------------------------------------------------- warm start
    def warm_start(self, *args: Any, method: str = "auto", num_steps: int = common.DEFAULT_WARM_START_STEPS,
                   rng_key: Array | None = None, **kwargs: Any) -> WarmStart:
        """Place the guide at the Laplace approximation (``"laplace"``) or the mode (``"map"``) of the posterior.

        The guide runs this on its first call with its ``warm_start`` option (``"auto"`` by default); call it
        yourself to redo it with other arguments. ``log p(u)`` (NumPyro's potential energy with its sign flipped: the
        model's log joint at ``x = biject_to(support)(u)`` plus ``log|det ∂x/∂u|``) is maximised from the
        ``init_loc_fn`` point with optax's L-BFGS and a zoom (strong Wolfe) line search, compiled as one loop, in
        float64 (``jax.enable_x64``) whatever the model's dtype. Then the flow is rebuilt with its layers at exactly
        the identity:

        * ``"laplace"``: ``Σ = H⁻¹`` with ``H = jax.hessian`` of ``-log p(u)`` at the mode (eigenvalues that are not
          clearly positive raised to ``1/init_scale²``, with a warning; a Hessian that is not finite or has no
          Cholesky factor falls back to ``"map"``); the fixed ``LowerCholeskyAffine`` layer is set to the mode and
          the Cholesky factor of ``Σ``, the ``DiagonalAffine`` before it to the identity: the guide at zero SVI steps
          is exactly ``N(mode, Σ)``, and SVI trains in whitened coordinates. ``D`` above :attr:`laplace_max_dim` is
          refused;
        * ``"map"``: the affine shift at the mode, the scale ``init_scale`` (no second derivatives: any latent size);
        * ``"auto"``: ``"laplace"`` where ``D <= laplace_max_dim``, else ``"map"``.

        Unless the search converged to a clean mode (``"laplace"``, positive-definite Hessian), the placed guide's
        ELBO (a fixed number of seeded draws) is compared with the default start's, and where it is lower or not
        finite (a funnel has no useful mode) the guide keeps the default start (``method="none"`` in the result).

        The guide keeps the placed flow as the initial values of its ``numpyro.param`` sites, so a following
        ``svi.init`` / ``svi.run`` starts from it; if SVI was already initialised, pass ``init_params=result.params``.
        Run it outside ``jax.jit`` (it returns host values).

        Args:
            *args, **kwargs: the model's arguments (``method``, ``num_steps`` and ``rng_key`` are taken by this method).
            method: ``"auto"`` (default), ``"laplace"`` or ``"map"``.
            num_steps: maximum number of L-BFGS iterations.
            rng_key: PRNG key for ``init_loc_fn`` (if the guide is not built yet) and the flow's initial parameters;
                ``None``: ``PRNGKey(0)``.

        Returns:
            a :class:`~flowcommon.guide.WarmStart` (mode, Cholesky factor of ``Σ``, ``log p`` at the mode,
            iterations, convergence, ``params``).

        Example:
            >>> guide = AutoFlowGuide(model, warm_start=None)
            >>> ws = guide.warm_start(x, y, method="laplace")
            >>> result = SVI(model, guide, numpyro.optim.Adam(1e-2), Trace_ELBO()).run(key, 1000, x, y)

        Reference: MacKay (2003), "Information Theory, Inference, and Learning Algorithms", ch. 27 (Laplace's
        method); Liu & Nocedal (1989), "On the limited memory BFGS method for large scale optimization".
        """
        common.check_warm_start(method, num_steps)
        key = jax.random.PRNGKey(common.SEED) if rng_key is None else rng_key
        fresh, potential = self.prototype_trace is None, None
        with self._building():
            if fresh:
                k_proto, key = jax.random.split(key)
                with handlers.block(), handlers.seed(rng_seed=k_proto):
                    self._prepare_prototype(*args, **kwargs)
            elif args or kwargs:  # the prototype's potential was built with the first call's arguments: use these
                potential = self._potential_fn_gen(*args, **kwargs)
            try:
                self._flow, result = self._warm_start(method, num_steps, key, potential)
            except Exception:
                if fresh:  # keep the guide usable with its default start
                    self._flow = self._build_flow(jnp.asarray(self._init_latent), key)
                raise
        return result

    def _warm_start(self, method: str, num_steps: int, key: Array, potential: Callable | None = None
                    ) -> tuple[Flow, WarmStart]:
        """Search, Hessian and placement (``potential``: NumPyro's potential energy of a dict of unconstrained
        values; default that of the prototype): the new flow and the record."""
        start = time.perf_counter()
        method = common.resolve_warm_start(method, self.latent_dim, self.laplace_max_dim)
        if method == "laplace":
            common.check_laplace_size(self.latent_dim, self.laplace_max_dim)
        fn = neg_log_density(potential or self._potential_fn, self._unpack_latent)
        u0 = jnp.asarray(self._init_latent)
        mode = find_mode(fn, u0, method, num_steps, self._init_scale)
        loc = jnp.asarray(mode.loc, u0.dtype)
        warm, default = self._build_flow(loc, key, mode.factor, exact=True), self._build_flow(u0, key)
        elbo_warm, elbo_default = (start_elbo(f, fn) for f in (warm, default))
        keep, message = common.keep_warm_start(mode.method, mode.converged, mode.floored, elbo_warm, elbo_default,
                                               mode.message)
        flow = warm if keep else default
        factor = jnp.asarray(mode.factor, loc.dtype) if keep and mode.factor is not None else None
        return flow, WarmStart(
            method=mode.method if keep else "none", loc=loc, scale_tril=factor, log_density=-mode.value,
            num_iterations=mode.iterations, converged=mode.converged, message=message,
            params={f"{self.prefix}_flow${k}": v for k, v in flow.params.items()}, time_s=time.perf_counter() - start)

    # ------------------------------------------------------------------------------------------------- posterior
    def _require_flow(self) -> Flow:
        if self._flow is None:
            raise RuntimeError("AutoFlowGuide is built on its first call: run SVI.init (or call the guide under "
                               "numpyro.handlers.seed with the model's arguments) first")
        return self._flow

    def _trained_flow(self, params: dict[str, Array]) -> Flow:
        """The guide's flow with the values of ``params`` (from ``SVI.get_params`` / ``svi_result.params``)."""
        flow, name = self._require_flow(), f"{self.prefix}_flow"
        missing = [k for k in flow.params if f"{name}${k}" not in params]
        if missing:
            raise KeyError(f"params lack the guide's parameters {name}${missing[0]} (and {len(missing) - 1} more): "
                           "pass the params of the SVI run that trained this guide (svi.get_params(state))")
        return flow.with_params({k: params[f"{name}${k}"] for k in flow.params})

    def _get_posterior(self) -> FlowDistribution:
        cls = PathFlowDistribution if self.stick_the_landing else _GuideFlowDistribution
        return cls(module(f"{self.prefix}_flow", self._require_flow()))

    def get_base_dist(self) -> dist.Distribution:
        """The standard normal base ``N(0, I_D)`` (event dim 1), or the custom base of a callable flow."""
        flow = self._require_flow()
        if isinstance(flow.base, TrainableBase):
            return flow.base.distribution()
        return flow.base if flow.base is not None else dist.Normal(jnp.zeros(self.latent_dim), 1.0).to_event(1)

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
        u = _forward(flow.transforms, base_draws(flow, int(self.num_quantile_samples), self.latent_dim))
        return self._unpack_and_constrain(jnp.quantile(u, q.astype(u.dtype), axis=0), params)

    def median(self, params: dict[str, Array]) -> dict[str, Array]:
        """Posterior median of every latent site (the 0.5 quantile of :meth:`quantiles`), ``{site: value}``."""
        return {name: v[0] for name, v in self.quantiles(params, [0.5]).items()}
