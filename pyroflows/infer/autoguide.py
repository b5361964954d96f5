"""``AutoFlowGuide``: a normalizing-flow posterior over all continuous latent sites of a Pyro model."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from torch.distributions import biject_to

from ..flows import recipes
from ..flows.core import Flow, FlowDistribution
from ..functional.affine import MIN_SCALE
from ..transforms.base import FlowChain, chain_forward
from ..transforms.linear import DiagonalAffine

Tensor = torch.Tensor

# ----------------------------------------------------------------------------------------------------- defaults
#: The flow used when none is named (see benchmarks/guide_choice_pyro.py for the measurements behind it).
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

#: name -> (recipe, fixed keyword arguments). A guide samples and scores its own samples, so BNAF takes its
#: sampling-fast orientation; "maf" and "nsf" are density-fast (sampling in ``D`` passes per layer) and are offered for
#: comparison.
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
_SET_BY_GUIDE = {"input_dim", "context_dim"}


def _recipe_arguments(recipe: type[Flow]) -> set[str]:
    params = inspect.signature(recipe.__init__).parameters  # follows the recording wrapper to the real signature
    return {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _softplus_inverse(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


def _inverse_affine_scale(scale: Tensor) -> Tensor:
    """``raw`` with ``affine_scale(raw) = scale``: ``affine_scale(raw) = MIN_SCALE + softplus(raw + c)``, ``c`` such
    that ``raw = 0`` gives 1 (:func:`pyroflows.functional.affine.affine_scale`)."""
    c = _softplus_inverse(torch.tensor(1.0 - MIN_SCALE, dtype=torch.float64)).item()
    return _softplus_inverse((scale - MIN_SCALE).clamp_min(1e-6)) - c


class AutoFlowGuide(AutoContinuous):
    """A Pyro autoguide whose posterior over the unconstrained latent vector is a normalizing flow.

    All continuous latent sites are mapped to unconstrained space with ``biject_to(support).inv`` and concatenated
    into ``u ∈ R^D`` (the log-Jacobian of each constraint enters exactly, as in every ``AutoContinuous`` guide). The
    posterior over ``u`` is ``u = loc + scale ⊙ T(z)``, ``z ~ N(0, I_D)``, where ``T`` is the chosen flow and the last
    layer is a learnable :class:`~pyroflows.transforms.linear.DiagonalAffine`; the whole chain is one
    :class:`~pyroflows.flows.Flow`, so scoring the guide's own sample costs no inverse pass. ``loc`` and ``scale`` start
    so that the draws of ``u`` have mean ``init_loc`` (from ``init_loc_fn``) and standard deviation ``init_scale`` per
    coordinate; for the recipes that start at the identity (all but bnaf, planar, radial, sylvester) this is
    ``loc = init_loc``, ``scale = init_scale``, i.e. the guide starts as ``AutoNormal`` does.

    Choosing the flow: affine ``"iaf"`` (the default) samples and scores in one pass per layer and can make the scale
    of one coordinate depend on others, which funnel-shaped posteriors need. The spline flows (``"spline_iaf"``,
    ``"nsf"``, ``"spline_coupling"``) map ``[-bound, bound]`` onto itself (identity outside), so they reshape
    marginals but cannot stretch a coordinate by a factor that depends on another one: on Neal's funnel they recover
    about a third of ``sd(v)`` where affine IAF recovers two thirds or more (``benchmarks/guide_choice_pyro.py``).
    ``"maf"`` and ``"nsf"`` sample in ``D`` passes per layer.

    Args:
        model: a Pyro model with static structure and continuous latent sites.
        flow: a name from :data:`FLOWS` (``"iaf"``, ``"maf"``, ``"nsf"``, ``"spline_iaf"``, ``"realnvp"``, ``"nice"``,
            ``"spline_coupling"``, ``"bnaf"``, ``"planar"``, ``"radial"``, ``"sylvester"``) or a callable
            ``latent_dim -> Flow`` (a pyroflows flow with ``input_dim = latent_dim`` and ``context_dim = 0``).
        num_transforms: number of flow layers (named flows only).
        hidden_dims: hidden widths of the flow's networks; ``None`` gives ``(max(32, 4 * latent_dim),) * 2``. Passed
            only to recipes that take it.
        init_loc_fn: per-site initialisation (``pyro.infer.autoguide.initialization``), e.g. ``init_to_value``.
        init_scale: initial standard deviation of each unconstrained coordinate (> 1e-3).
        create_plates: as in Pyro's ``AutoGuide``.
        **flow_kwargs: further arguments of the recipe (``count_bins``, ``bound``, ``hidden_factor``, ...).

    Example:
        >>> guide = AutoFlowGuide(model, "spline_iaf", num_transforms=2, count_bins=8)
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        >>> for _ in range(1000): svi.step(data)
        >>> guide.quantiles([0.05, 0.5, 0.95]); Predictive(model, guide=guide, num_samples=100)(data)
        >>> nuts = NUTS(poutine.reparam(model, config=lambda _: NeuTraReparam(guide)))   # NeuTra HMC

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
        if not isinstance(num_transforms, int) or num_transforms < 1:
            raise ValueError(f"num_transforms must be a positive integer, got {num_transforms!r}")
        if isinstance(flow, str):
            self._check_named_flow(flow, hidden_dims, flow_kwargs)
        elif callable(flow):
            extra = sorted(flow_kwargs) + (["hidden_dims"] if hidden_dims is not None else [])
            if extra:
                raise TypeError(
                    f"{extra} apply to named flows only; with a callable `flow`, pass them to the flow you build "
                    "inside the callable"
                )
        else:
            raise TypeError(f"flow must be a name ({', '.join(FLOWS)}) or a callable latent_dim -> Flow, got {flow!r}")
        super().__init__(model, init_loc_fn=init_loc_fn)
        self.create_plates = create_plates
        self._flow_spec = flow
        self._num_transforms = num_transforms
        self._hidden_dims = None if hidden_dims is None else tuple(int(h) for h in hidden_dims)
        self._flow_kwargs = dict(flow_kwargs)
        self._init_scale = float(init_scale)
        self.flow: Flow | None = None

    # ------------------------------------------------------------------------------------------------- building
    @staticmethod
    def _check_named_flow(name: str, hidden_dims: Sequence[int] | None, flow_kwargs: dict[str, Any]) -> None:
        if name not in FLOWS:
            raise ValueError(f"unknown flow {name!r}: use one of {', '.join(repr(n) for n in FLOWS)}, "
                             "or pass a callable latent_dim -> pyroflows Flow")
        recipe, _ = FLOWS[name]
        accepted = _recipe_arguments(recipe) - _SET_BY_GUIDE - {"num_transforms"}
        reserved = sorted(set(flow_kwargs) & _SET_BY_GUIDE)
        if reserved:
            raise TypeError(f"AutoFlowGuide sets {reserved} itself (input_dim = the latent size, no context); "
                            "remove them from the arguments")
        unknown = sorted(set(flow_kwargs) - accepted)
        if unknown:
            raise TypeError(f"flow {name!r} ({recipe.__name__}) takes no argument(s) {unknown}; it accepts "
                            f"{sorted(accepted | {'num_transforms'})}")
        if hidden_dims is not None and "hidden_dims" not in accepted:
            raise TypeError(f"flow {name!r} ({recipe.__name__}) takes no hidden_dims; set its size with "
                            f"{sorted(accepted)}")

    def _build_transform_flow(self, latent_dim: int) -> Flow:
        """The flow ``T`` (before the final affine map) for a latent of size ``latent_dim``."""
        spec = self._flow_spec
        if not isinstance(spec, str):
            flow = spec(latent_dim)
            if not isinstance(flow, Flow):
                raise TypeError(f"the `flow` callable must return a pyroflows Flow, got {type(flow).__name__}")
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
        return recipe(latent_dim, **kwargs)

    @staticmethod
    def _check_sites(trace: Any) -> None:
        """Discrete latent sites, latent sites in subsampled plates and models without a latent site get an error
        that names the fix."""
        for name, site in trace.iter_stochastic_nodes():
            fn = site["fn"]
            if fn.support.is_discrete:
                raise ValueError(
                    f"AutoFlowGuide: latent site {name!r} is discrete ({type(fn).__name__}); the guide covers "
                    "continuous latents only. Marginalise it: mark it with config_enumerate / infer={'enumerate': "
                    "'parallel'}, train with TraceEnum_ELBO, and build the flow guide on "
                    f"poutine.block(model, hide=[{name!r}]) (inside an AutoGuideList if other parts need a guide); "
                    "or make the variable continuous."
                )
            for frame in site["cond_indep_stack"]:
                if frame.full_size is not None and frame.size != frame.full_size:
                    raise ValueError(
                        f"AutoFlowGuide: latent site {name!r} is inside plate {frame.name!r} subsampled to "
                        f"{frame.size} of {frame.full_size}; a global flow over it would learn only the current "
                        "mini-batch. Use a per-datum or amortized guide for local variables: e.g. an AutoGuideList "
                        f"with AutoNormal on poutine.block(model, expose=[{name!r}]) and AutoFlowGuide on "
                        f"poutine.block(model, hide=[{name!r}]), or an amortized encoder; or do not subsample the "
                        "plate."
                    )
        if not any(site["value"].numel() for _, site in trace.iter_stochastic_nodes()):
            raise ValueError(
                "AutoFlowGuide: the model has no continuous latent sample site (every pyro.sample is observed or "
                "empty); there is nothing to approximate: use an empty guide (def guide(*args, **kwargs): pass)"
            )

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        try:
            super()._setup_prototype(*args, **kwargs)
            self._check_sites(self.prototype_trace)
        except (ValueError, RuntimeError, NotImplementedError):
            trace, self.prototype_trace = self.prototype_trace, None  # so that the next call starts afresh
            if trace is not None:
                self._check_sites(trace)  # raises the guide's own message where it has one
            raise
        init_loc = self._init_loc()
        layers = self._build_transform_flow(self.latent_dim)
        flow = Flow([*layers.transforms, DiagonalAffine(self.latent_dim)], base=layers.base)
        flow.to(device=init_loc.device, dtype=init_loc.dtype)  # the guide lives where the model's values live
        self._initialise_affine(flow, init_loc)
        self.flow = flow

    @torch.no_grad()
    def _initialise_affine(self, flow: Flow, init_loc: Tensor) -> None:
        """Set the final affine map so that the draws of ``u`` have mean ``init_loc`` and sd ``init_scale`` per
        coordinate.

        ``T(z)`` (the layers before the affine) is measured on antithetic draws ``±z`` (fixed seed); for a flow at the
        identity this gives ``shift = init_loc`` and ``scale = init_scale`` exactly."""
        *layers, affine = flow.transforms
        z = self._base_draws(flow, _DEFAULT_NUM_INIT_SAMPLES // 2)
        if flow.base is None:
            z = torch.cat([z, -z])
        x, _ = chain_forward(layers, z, None)
        # for the standard normal base, the draws' own sd is divided out, so that a flow at the identity gives
        # exactly scale = init_scale (as numpyroflows' guide does)
        mean, sd = x.mean(0), x.std(0) / (z.std(0) if flow.base is None else 1.0)
        if not (torch.isfinite(mean).all() and torch.isfinite(sd).all() and (sd > 0).all()):
            raise ValueError("the flow's draws at initialisation are not finite or are constant in some coordinate; "
                             "check the flow (a callable `flow` must return an invertible flow)")
        scale = self._init_scale / sd
        affine.head.set_value("shift", init_loc - scale * mean)
        affine.head.set_value("raw_scale", _inverse_affine_scale(scale))

    def _base_draws(self, flow: Flow, n: int) -> Tensor:
        """``n`` base draws; from a generator seeded with ``_SEED`` for the standard normal base (the global RNG is
        left alone), from the base itself for a custom one."""
        ref = flow._ref
        if flow.base is not None:
            return flow.base.sample((n,)).to(ref)
        gen = torch.Generator(device=ref.device).manual_seed(_SEED)
        return torch.randn(n, self.latent_dim, generator=gen, device=ref.device, dtype=ref.dtype)

    # ------------------------------------------------------------------------------------------------- posterior
    def get_base_dist(self) -> dist.TorchDistribution:
        """The standard normal base ``N(0, I_D)`` (event dim 1) on the guide's device and dtype (or the custom base
        of a callable flow)."""
        flow = self._require_flow()
        if flow.base is not None:
            return flow.base
        ref = flow._ref
        zeros = torch.zeros(self.latent_dim, device=ref.device, dtype=ref.dtype)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def get_transform(self, *args: Any, **kwargs: Any) -> FlowChain:
        """The whole map ``u = loc + scale ⊙ T(z)`` as a torch ``Transform`` (exact inverse), as ``NeuTraReparam``
        needs."""
        return self._require_flow().transform()

    def get_posterior(self, *args: Any, **kwargs: Any) -> FlowDistribution:
        """The guide's distribution over the unconstrained latent vector ``u`` (a :class:`FlowDistribution`)."""
        return self._require_flow()()

    def _require_flow(self) -> Flow:
        if self.prototype_trace is None:
            raise RuntimeError("AutoFlowGuide is built on its first call: call guide(*args) (or run one SVI step) "
                               "with the model's arguments first")
        return self.flow  # attribute access through PyroModule registers the parameters with Pyro

    # ------------------------------------------------------------------------------------------------- summaries
    @torch.no_grad()
    def _unconstrained_quantiles(self, quantiles: Tensor) -> Tensor:
        flow = self._require_flow()
        n = int(self.num_quantile_samples)
        z = self._base_draws(flow, n)
        u = chain_forward(list(flow.transforms), z, None)[0].sort(0).values
        pos = quantiles.to(u) * (n - 1)
        lo = pos.floor().long().clamp(0, n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        frac = (pos - lo.to(pos))[:, None]
        return u[lo] * (1 - frac) + u[hi] * frac

    def _constrain(self, latent: Tensor) -> dict[str, Tensor]:
        return {site["name"]: biject_to(site["fn"].support)(value) for site, value in self._unpack_latent(latent)}

    @torch.no_grad()
    def quantiles(self, quantiles: Sequence[float] | Tensor, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Posterior quantiles of every latent site: ``{site: tensor of shape (len(quantiles),) + site shape}``.

        Coordinate-wise quantiles of ``num_quantile_samples`` draws of ``u`` (fixed seed), mapped to each site's
        support; for elementwise constraints this commutes with the quantile.

        Example:
            >>> guide.quantiles([0.05, 0.5, 0.95])["scale"]
        """
        q = torch.as_tensor(quantiles, dtype=torch.float64).reshape(-1)
        if not bool(((q >= 0) & (q <= 1)).all()):
            raise ValueError(f"quantiles must lie in [0, 1], got {q.tolist()}")
        lat = self._unconstrained_quantiles(q)
        parts = [self._constrain(row) for row in lat]
        return {name: torch.stack([p[name] for p in parts]) for name in parts[0]}

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Posterior median of every latent site (the 0.5 quantile of :meth:`quantiles`), ``{site: value}``."""
        return {name: v[0] for name, v in self.quantiles([0.5]).items()}

