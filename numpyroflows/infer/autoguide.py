"""``AutoFlowGuide``: a normalizing-flow posterior over all continuous latent sites of a NumPyro model.

Mirrors :mod:`pyroflows.infer.autoguide` (same names, arguments, defaults and parameter layout).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.infer.autoguide import AutoContinuous
from numpyro.infer.initialization import init_to_median

from ..flows import recipes
from ..flows.core import Flow, FlowDistribution
from ..functional.affine import _SCALE_SHIFT, MIN_SCALE
from ..io import module
from ..transforms.base import FlowChain, chain_forward
from ..transforms.linear import DiagonalAffine

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


def _inverse_affine_scale(scale: Array) -> Array:
    """``raw`` with ``affine_scale(raw) = MIN_SCALE + softplus(raw + c) = scale`` (inverse of
    :func:`numpyroflows.functional.affine.affine_scale`)."""
    y = jnp.maximum(scale - MIN_SCALE, 1e-6)
    return y + jnp.log(-jnp.expm1(-y)) - _SCALE_SHIFT


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


class AutoFlowGuide(AutoContinuous):
    """A NumPyro autoguide whose posterior over the unconstrained latent vector is a normalizing flow.

    All continuous latent sites are mapped to unconstrained space with ``biject_to(support).inv`` and concatenated
    into ``u ∈ R^D`` (the log-Jacobian of each constraint enters exactly, as in every ``AutoContinuous`` guide). The
    posterior over ``u`` is ``u = loc + scale ⊙ T(z)``, ``z ~ N(0, I_D)``, where ``T`` is the chosen flow and the last
    layer is a learnable :class:`~numpyroflows.transforms.linear.DiagonalAffine`; the whole chain is one
    :class:`~numpyroflows.flows.Flow`, and the ELBO scores the guide's own sample from its forward pass (no inverse
    pass). ``loc`` and ``scale`` start so that the draws of ``u`` have mean ``init_loc`` (from ``init_loc_fn``) and
    standard deviation ``init_scale`` per coordinate; for the recipes that start at the identity (all but bnaf,
    planar, radial, sylvester) this is ``loc = init_loc``, ``scale = init_scale``, i.e. the guide starts as
    ``AutoNormal`` does. The flow's parameters are registered with ``numpyro.param`` under
    ``f"{prefix}_flow$<name>"`` (names as in :attr:`numpyroflows.flows.Flow.params`); their initial values are drawn
    with a key from ``numpyro.prng_key()`` on the guide's first call (``SVI.init``).

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
        **flow_kwargs: further arguments of the recipe (``count_bins``, ``bound``, ``hidden_factor``, ...).

    Example:
        >>> guide = AutoFlowGuide(model, "spline_iaf", num_transforms=2, count_bins=8)
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
        **flow_kwargs: Any,
    ) -> None:
        if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or not init_scale > MIN_SCALE:
            raise ValueError(
                f"init_scale must be a number > {MIN_SCALE} (the floor of the guide's scale), got {init_scale!r}"
            )
        if isinstance(num_transforms, bool) or not isinstance(num_transforms, int) or num_transforms < 1:
            raise ValueError(f"num_transforms must be a positive integer, got {num_transforms!r}")
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

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
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
        key = numpyro.prng_key()
        k_flow, k_init = jax.random.split(jax.random.PRNGKey(_SEED) if key is None else key)
        init_loc = jnp.asarray(self._init_latent)
        transform_flow = self._build_transform_flow(self.latent_dim, k_flow)
        affine = DiagonalAffine(self.latent_dim)
        affine = self._initialise_affine(transform_flow, affine, init_loc, k_init)
        self._flow = Flow([*transform_flow.transforms, affine], base=transform_flow.base)

    def _initialise_affine(self, transform_flow: Flow, affine: DiagonalAffine, init_loc: Array,
                           key: Array) -> DiagonalAffine:
        """``affine`` set so that the draws of ``u`` have mean ``init_loc`` and sd ``init_scale`` per coordinate.

        With the standard normal base, ``T(z)`` is measured on antithetic draws ``±z``: ``m = mean T(z)``,
        ``s = sd T(z) / sd z`` (exact for an affine ``T``, so a flow at the identity gets ``shift = init_loc``,
        ``scale = init_scale`` up to round-off); with a custom base, ``m`` and ``s = sd T(z)`` come from plain draws.
        Then ``shift = init_loc - init_scale m / s``, ``scale = init_scale / s``."""
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
        scale = self._init_scale / sd
        params = dict(affine.params)
        params["head.shift"] = (init_loc - scale * mean).astype(params["head.shift"].dtype)
        params["head.raw_scale"] = _inverse_affine_scale(scale).astype(params["head.raw_scale"].dtype)
        return affine.with_params(params)

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
