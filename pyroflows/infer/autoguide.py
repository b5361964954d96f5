"""``AutoFlowGuide``: a normalizing-flow posterior over all continuous latent sites of a Pyro model.

The backend-free parts (defaults, the flow table, argument and site checks, messages, the Laplace algebra) are in
:mod:`flowcommon.guide`; the mode search and the Hessian of the warm start in :mod:`pyroflows.infer.warm_start`.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from pyro.params.param_store import param_with_module_name
from torch.distributions import biject_to

from flowcommon import guide as common
from flowcommon.guide import WarmStart

from ..flows import recipes
from ..flows.core import Flow, FlowDistribution, base_distribution
from ..functional.affine import MIN_SCALE
from ..nn.made import MADE
from ..nn.mlp import MLP
from ..transforms.base import FlowChain, FlowTransform, chain_forward
from ..transforms.linear import DiagonalAffine, LowerCholeskyAffine
from .posterior import PosteriorDraws
from .warm_start import base_draws, find_mode, float64_density, start_elbo

Tensor = torch.Tensor

#: name -> (recipe, fixed keyword arguments): the guide's named flows (:data:`flowcommon.guide.FLOW_RECIPES`).
FLOWS: dict[str, tuple[type[Flow], dict[str, Any]]] = common.flow_table(recipes)
_SET_BY_GUIDE = ("input_dim", "context_dim")


def _check_sites(trace: Any) -> None:
    """Discrete latent sites, latent sites in subsampled plates and models without a latent site get an error that
    names the fix."""
    for name, site in trace.iter_stochastic_nodes():
        fn = site["fn"]
        if fn.support.is_discrete:
            raise ValueError(common.discrete_site_message(name, type(fn).__name__, "pyro"))
        for frame in site["cond_indep_stack"]:
            if frame.full_size is not None and frame.size != frame.full_size:
                raise ValueError(common.subsampled_site_message(name, frame.name, frame.size, frame.full_size, "pyro"))
    if not any(site["value"].numel() for _, site in trace.iter_stochastic_nodes()):
        raise ValueError(common.no_latent_message("pyro"))


def _recipe_flow(spec: str | Callable[[int], Flow], latent_dim: int, num_transforms: int,
                 hidden_dims: Sequence[int] | None, flow_kwargs: dict[str, Any]) -> Flow:
    """The guide's flow ``T`` (before the final layers) for a latent of size ``latent_dim``: the named recipe of
    :data:`FLOWS` with the guide's settings, or what the ``spec`` callable returns (checked)."""
    if not isinstance(spec, str):
        flow = spec(latent_dim)
        common.check_flow_result(flow, Flow, getattr(flow, "input_dim", None), getattr(flow, "context_dim", None),
                                 latent_dim, "pyroflows")
        return flow
    recipe, kwargs = common.recipe_kwargs(spec, FLOWS, latent_dim, num_transforms, hidden_dims, flow_kwargs)
    return recipe(latent_dim, **kwargs)


def _zero_conditioners(layers: Sequence[torch.nn.Module]) -> None:
    """Zero the output weights of the layers' conditioners (:meth:`MADE.zero_output_`, :meth:`MLP.zero_output_`), so
    that each such layer computes exactly its output bias: the transformer's identity parameters in every recipe that
    starts at the identity. The recipes draw these weights in ``±1e-3`` so that gradients reach every weight at once;
    from zero, SVI's first step moves the output weights and the hidden layers follow."""
    for t in layers:
        for net in (getattr(t, "made", None), getattr(t, "net", None)):
            if isinstance(net, (MADE, MLP)):
                net.zero_output_()


@torch.no_grad()
def _final_layers(layers: list, z: Tensor, standard_base: bool, loc: Tensor, init_scale: float, whiten: bool,
                  factor: Tensor | None = None) -> list[FlowTransform]:
    """The layers after ``layers``: ``[DiagonalAffine]``, then ``LowerCholeskyAffine`` where ``whiten``.

    Without ``factor`` the draws of ``u`` get mean ``loc`` and sd ``init_scale`` per coordinate (the affine map in
    the units of ``u``; the fixed layer, if any, is the identity). With a lower-triangular ``factor = C`` (a Laplace
    start) the affine map standardizes ``T(z)`` to mean 0 and sd 1 and the fixed layer maps it to ``loc + C x``: the
    draws have mean ``loc`` and covariance ``C Cᵀ`` for ``T`` at the identity, and the trained layers act in
    coordinates whitened by the Laplace approximation.

    ``T(z)`` is measured on the base draws ``z`` (antithetic ``±z`` for the standard normal base, whose own sd is
    divided out, so that a flow at the identity gives exactly ``shift = loc``, ``scale = init_scale``)."""
    x, _ = chain_forward(layers, z, None)
    mean, sd = x.mean(0), x.std(0) / (z.std(0) if standard_base else 1.0)
    if not (torch.isfinite(mean).all() and torch.isfinite(sd).all() and (sd > 0).all()):
        raise ValueError("the flow's draws at initialisation are not finite or are constant in some coordinate; "
                         "check the flow (a callable `flow` must return an invertible flow)")
    d, dtype = loc.shape[0], loc.dtype  # the affine's start, computed in float64, is exact in dtype
    target_loc, target_scale = (loc, init_scale) if factor is None else (torch.zeros_like(loc), 1.0)
    scale = target_scale / sd
    final: list[FlowTransform] = [DiagonalAffine(d, loc=target_loc - scale * mean,
                                                 scale=scale.clamp_min(MIN_SCALE + 1e-6), dtype=dtype)]
    if whiten:
        fixed = LowerCholeskyAffine(d, dtype=dtype).to(loc.device)
        final.append(fixed if factor is None else fixed.with_values(loc, factor))
    return final


def _adopt_store_values(name: str, flow: Flow) -> None:
    """Make the flow's parameters the param store's, by name, as ``PyroModule`` does for its own: values that the
    store holds under the flow's names (a loaded checkpoint, or another module of the same name) replace the flow's
    (``pyro.module(..., update_module_params=True)``), after a check that their shapes match."""
    store = pyro.get_param_store()
    for pname, p in flow.named_parameters():
        key = param_with_module_name(name, pname)
        if key in store and store.get_param(key).shape != p.shape:
            raise ValueError(f"the param store holds {key!r} of shape {tuple(store.get_param(key).shape)}, but this "
                             f"guide's flow has shape {tuple(p.shape)} there: the store comes from a guide with other "
                             "settings (flow, hidden_dims, warm_start); build the guide with those, or start afresh "
                             "with pyro.clear_param_store()")
    pyro.module(name, flow, update_module_params=True)


class _Scorer(torch.nn.Module):
    """``x -> log q(x)`` of a flow, by its exact inverse pass (a module, so that ``functional_call`` can run it with
    other parameter values)."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor) -> Tensor:
        return self.flow().log_prob(x)


class PathFlowDistribution(FlowDistribution):
    """A :class:`FlowDistribution` whose ``log_prob`` holds the flow's parameters fixed: ``log q_θ̄(x)``, with ``θ̄``
    the current values without gradient, differentiable in ``x`` only (by the exact inverse pass).

    Scoring a reparameterized draw ``x = T_θ(z)`` this way gives the path gradient of the ELBO ("sticking the
    landing", Roeder et al. 2017; for normalizing flows, Vaitl et al. 2022, "Gradients should stay on path"): the
    score term ``∇_θ log q_θ(x)`` at fixed ``x``, whose expectation is zero, is dropped, so the gradient's variance
    vanishes where ``q`` equals the posterior. The value of ``log_prob`` is unchanged."""

    def log_prob(self, value: Tensor) -> Tensor:
        fixed = {f"flow.{k}": v.detach() for k, v in self.flow.named_parameters()}
        return torch.func.functional_call(_Scorer(self.flow), fixed, (value,))


class AutoFlowGuide(PosteriorDraws, AutoContinuous):
    """A Pyro autoguide whose posterior over the unconstrained latent vector is a normalizing flow.

    All continuous latent sites are mapped to unconstrained space with ``biject_to(support).inv`` and concatenated
    into ``u ∈ R^D`` (the log-Jacobian of each constraint enters exactly, as in every ``AutoContinuous`` guide). The
    posterior over ``u`` is ``u = m + C (a + s ⊙ T(z))``, ``z ~ N(0, I_D)``: ``T`` is the chosen flow, ``(a, s)`` a
    learnable :class:`~pyroflows.transforms.linear.DiagonalAffine`, and ``(m, C)`` a fixed
    :class:`~pyroflows.transforms.linear.LowerCholeskyAffine` (present when ``D <= laplace_max_dim``). The whole chain
    is one :class:`~pyroflows.flows.Flow`, so scoring the guide's own sample costs no inverse pass. Its parameters are
    the param store's, by name (``AutoFlowGuide.flow$$$<name>``): a store loaded from a checkpoint resumes a new guide
    of the same settings (the fixed layer is recomputed by the warm start, which is deterministic).

    Start (``warm_start="auto"``, the default): on the guide's first call (the first ``svi.step``, also under
    ``JitTrace_ELBO``) L-BFGS finds the mode of ``log p(u)`` from the ``init_loc_fn`` point, and the guide starts at
    the Laplace approximation ``N(mode, H⁻¹)``: ``m`` the mode, ``C`` the Cholesky factor of ``H⁻¹``, the flow and
    the affine map at the identity. The trained layers then act in coordinates whitened by the Laplace approximation,
    so a learning rate means a step in units of the posterior's own scale on every model (an Adam step of 5e-3 moves
    a location by 0.005 posterior sds, not by 5e-3 whatever its sd), and SVI starts where ``AutoLaplaceApproximation``
    ends. Where ``D > laplace_max_dim`` the start is the mode (``"map"``). Where the search finds no clean mode (a
    funnel), or the Hessian is not positive definite, the warm start falls back (to the mode, or to the default start
    below) with a warning; see :meth:`warm_start`. ``warm_start=None`` skips the search: the draws of ``u`` start with
    mean ``init_loc`` and sd ``init_scale`` per coordinate, ``C = I``, and ``(a, s)`` in the units of ``u`` (for the
    recipes that start at the identity, all but bnaf, radial and sylvester, ``a = init_loc``, ``s = init_scale``: the
    start of ``AutoNormal``).

    Choosing the flow: affine ``"iaf"`` (the default) samples and scores in one pass per layer and can make the scale
    of one coordinate depend on others, which funnel-shaped posteriors need. The spline flows (``"spline_iaf"``,
    ``"nsf"``, ``"spline_coupling"``) map ``[-bound, bound]`` onto itself (identity outside), so they reshape
    marginals but cannot stretch a coordinate by a factor that depends on another one (compared on Neal's funnel in
    ``benchmarks/guide_choice_pyro.py``). ``"maf"`` and ``"nsf"`` sample in ``D`` passes per layer.

    Args:
        model: a Pyro model with static structure and continuous latent sites.
        flow: a name from :data:`FLOWS` or a callable ``latent_dim -> Flow`` (a pyroflows flow with
            ``input_dim = latent_dim`` and ``context_dim = 0``).
        num_transforms: number of flow layers (named flows only).
        hidden_dims: hidden widths of the flow's networks; ``None``: two layers of ``max(32, min(4 D, 256))`` units
            (:func:`flowcommon.guide.default_hidden_dims`). Passed only to recipes that take it.
        init_loc_fn: per-site initialisation (``pyro.infer.autoguide.initialization``), e.g. ``init_to_value``.
        init_scale: initial standard deviation of each unconstrained coordinate (> 1e-3).
        create_plates: as in Pyro's ``AutoGuide``.
        warm_start: ``"auto"`` (default), ``"laplace"``, ``"map"`` or ``None``: run :meth:`warm_start` with this
            method when the guide is built on its first call, e.g. inside the first ``svi.step`` (``Trace_ELBO``,
            ``JitTrace_ELBO``); ``None``: start at ``N(init_loc, init_scale²)`` without a search.
        stick_the_landing: score the guide's own draws with its parameters held fixed (:class:`PathFlowDistribution`),
            so that ``Trace_ELBO`` computes the path gradient, whose variance vanishes as the guide approaches the
            posterior; the price is the flow's inverse pass in every step (``D`` network passes per autoregressive
            layer of an IAF).
        **flow_kwargs: further arguments of the recipe (``count_bins``, ``bound``, ``hidden_factor``, ...).

    Example:
        >>> guide = AutoFlowGuide(model, "spline_iaf", num_transforms=2, count_bins=8)
        >>> svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 5e-3}), Trace_ELBO())
        >>> result = pyroflows.run_svi(svi, data, num_steps=5000)   # starts at the Laplace approximation
        >>> guide.quantiles([0.05, 0.5, 0.95]); Predictive(model, guide=guide, num_samples=100)(data)
        >>> nuts = NUTS(poutine.reparam(model, config=lambda _: NeuTraReparam(guide)))   # NeuTra HMC

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
                 num_transforms: int = common.DEFAULT_NUM_TRANSFORMS, hidden_dims: Sequence[int] | None = None,
                 init_loc_fn: Callable = init_to_median, init_scale: float = common.DEFAULT_INIT_SCALE,
                 create_plates: Callable | None = None, warm_start: str | None = common.DEFAULT_WARM_START,
                 stick_the_landing: bool = False, **flow_kwargs: Any) -> None:
        init_scale = common.check_init_scale(init_scale, MIN_SCALE)
        common.check_positive_int(num_transforms, "num_transforms")
        common.check_warm_start(warm_start, option=True)
        common.check_flow_choice(flow, FLOWS, hidden_dims, flow_kwargs, _SET_BY_GUIDE, "pyroflows")
        super().__init__(model, init_loc_fn=init_loc_fn)
        self.create_plates = create_plates
        self._flow_spec, self._num_transforms, self._flow_kwargs = flow, num_transforms, dict(flow_kwargs)
        self._hidden_dims = None if hidden_dims is None else tuple(int(h) for h in hidden_dims)
        self._init_scale, self._warm_start_option = init_scale, warm_start
        self.stick_the_landing = bool(stick_the_landing)
        self.flow: Flow | None = None  # built with the prototype, on the first call

    # ------------------------------------------------------------------------------------------------- building
    @contextlib.contextmanager
    def _building(self) -> Iterator[None]:
        """Where the block does not finish (an error, or ``KeyboardInterrupt``) before a flow exists, the guide goes
        back to unbuilt, so that the next call builds it afresh instead of running half-built."""
        try:
            yield
        except BaseException:
            if self.flow is None:
                self.prototype_trace = None
            raise

    def _prepare_prototype(self, *args: Any, **kwargs: Any) -> None:
        """Pyro's prototype trace (sites, shapes, ``init_loc``) and the guide's site checks; no flow yet."""
        try:
            super()._setup_prototype(*args, **kwargs)
            _check_sites(self.prototype_trace)
        except (ValueError, RuntimeError, NotImplementedError):
            if self.prototype_trace is not None:
                _check_sites(self.prototype_trace)  # raises the guide's own message where it has one
            raise

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        with self._building():  # every attribute is in place, or the guide is unbuilt
            self._prepare_prototype(*args, **kwargs)
            option, flow = self._warm_start_option, None
            if option is not None:
                try:
                    flow, _ = self._warm_start(option, common.DEFAULT_WARM_START_STEPS, args, kwargs)
                except common.FlatDensityError:
                    if option != "auto":
                        raise
                    warnings.warn(common.FLAT_DENSITY_FALLBACK, RuntimeWarning, stacklevel=4)
            self.flow = self._build_flow(self._init_loc()) if flow is None else flow

    def _build_flow(self, loc: Tensor, factor: Any = None, exact: bool = False) -> Flow:
        """A fresh flow ``[*recipe layers, DiagonalAffine(, LowerCholeskyAffine)]`` placed at ``loc`` with sd
        ``init_scale`` (``factor is None``) or at ``N(loc, factor factorᵀ)``, on ``loc``'s device and dtype (where the
        model's values live). The fixed layer is there whenever the latent fits :attr:`laplace_max_dim` (the identity
        without a Laplace start), so that the parameter layout does not depend on how a warm start ended. ``exact``:
        the recipe layers start at exactly the identity, as the warm start needs."""
        layers = _recipe_flow(self._flow_spec, self.latent_dim, self._num_transforms, self._hidden_dims,
                              self._flow_kwargs).to(device=loc.device, dtype=loc.dtype)
        if exact:
            _zero_conditioners(layers.transforms)
        z = base_draws(layers, common.NUM_INIT_SAMPLES // 2, self.latent_dim)
        z = torch.cat([z, -z]) if layers.base is None else z
        factor = None if factor is None else torch.as_tensor(factor).to(loc)
        whiten = self.latent_dim <= self.laplace_max_dim
        final = _final_layers(list(layers.transforms), z, layers.base is None, loc, self._init_scale, whiten, factor)
        return Flow([*layers.transforms, *final], base=layers.base).to(device=loc.device, dtype=loc.dtype)

    # ------------------------------------------------------------------------------------------------- warm start
    def warm_start(self, *args: Any, method: str = "auto", num_steps: int = common.DEFAULT_WARM_START_STEPS,
                   **kwargs: Any) -> WarmStart:
        """Place the guide at the Laplace approximation (``"laplace"``) or the mode (``"map"``) of the posterior.

        The guide runs this on its first call with its ``warm_start`` option (``"auto"`` by default); call it
        yourself to redo it with other arguments. Maximises ``log p(u)`` (the model's log joint at
        ``x = biject_to(support)(u)`` plus ``log|det ∂x/∂u|``) with L-BFGS and a strong Wolfe line search from the
        ``init_loc_fn`` point, in float64 whatever the model's dtype (``u`` and the model's floating tensor arguments
        are cast; :mod:`pyroflows.infer.warm_start`). Then the flow is rebuilt with its layers at exactly the identity:

        * ``"laplace"``: ``Σ = H⁻¹`` with ``H`` the Hessian of ``-log p(u)`` at the mode (eigenvalues that are not
          positive raised to ``1/init_scale²``, with a warning); the fixed ``LowerCholeskyAffine`` layer is set to the
          mode and the Cholesky factor of ``Σ``, the ``DiagonalAffine`` before it to the identity: the guide at zero
          SVI steps is exactly ``N(mode, Σ)``, and SVI trains in whitened coordinates. ``D`` above
          :attr:`laplace_max_dim` is refused;
        * ``"map"``: the affine shift at the mode, the scale ``init_scale`` (no second derivatives: any latent size);
        * ``"auto"``: ``"laplace"`` where ``D <= laplace_max_dim``, else ``"map"``.

        The guide's entries in Pyro's param store are replaced (a later ``svi.step`` trains the new ones; Adam state
        starts afresh). A non-finite ``log p`` stops the search at the best point found, with a warning. Unless the
        search converged to a clean mode (``"laplace"``, positive-definite Hessian), the placed guide's ELBO
        (``START_ELBO_DRAWS`` seeded draws) is compared with the default start's, and where it is lower or not finite
        (a funnel has no useful mode) the guide keeps the default start, with a warning.

        Args:
            *args, **kwargs: the model's arguments (``method`` and ``num_steps`` are taken by this method).
            method: ``"auto"`` (default), ``"laplace"`` or ``"map"``.
            num_steps: maximum number of L-BFGS iterations.

        Returns:
            a :class:`~flowcommon.guide.WarmStart` (mode, Cholesky factor of ``Σ``, ``log p`` at the mode,
            iterations, convergence, the new parameters).

        Example:
            >>> ws = AutoFlowGuide(model, warm_start=None).warm_start(x, y, method="laplace")

        Reference: MacKay (2003), "Information Theory, Inference, and Learning Algorithms", ch. 27 (Laplace's
        method); Liu & Nocedal (1989), "On the limited memory BFGS method for large scale optimization".
        """
        common.check_warm_start(method, num_steps)
        fresh = self.prototype_trace is None
        with self._building():
            if fresh:
                self._prepare_prototype(*args, **kwargs)
            try:
                flow, result = self._warm_start(method, num_steps, args, kwargs)
            except Exception:
                if fresh:  # keep the guide usable with its default start
                    self.flow = self._build_flow(self._init_loc())
                raise
        with self._pyro_context:
            store, prefix = pyro.get_param_store(), param_with_module_name(self._pyro_get_fullname("flow"), "")
            for name in [k for k in store.keys() if k.startswith(prefix)]:
                del store[name]  # an earlier flow's values (and layout) must not override the new ones
            self.flow = flow
            flow = self.flow  # PyroModule registers the new parameters here
        result.params = {f"{prefix}{k}": v for k, v in flow.named_parameters()}
        return result

    def _warm_start(self, method: str, num_steps: int, args: tuple, kwargs: dict) -> tuple[Flow, WarmStart]:
        """Search, Hessian and placement: the new flow and the record (no param-store handling)."""
        start = time.perf_counter()
        method = common.resolve_warm_start(method, self.latent_dim, self.laplace_max_dim)
        if method == "laplace":
            common.check_laplace_size(self.latent_dim, self.laplace_max_dim)
        init_loc = self._init_loc().detach()
        fn, u0, note = float64_density(self.model, self._unpack_latent, args, kwargs, init_loc)
        mode = find_mode(fn, u0, method, num_steps, self._init_scale, note)
        loc = mode.loc.to(init_loc)
        warm, default = self._build_flow(loc, mode.factor, exact=True), self._build_flow(init_loc)
        elbo_warm, elbo_default = (start_elbo(f, fn, self.latent_dim) for f in (warm, default))
        keep, message = common.keep_warm_start(mode.method, mode.converged, mode.floored, elbo_warm, elbo_default,
                                               mode.message)
        factor = torch.as_tensor(mode.factor).to(loc) if keep and mode.factor is not None else None
        return (warm if keep else default), WarmStart(
            method=mode.method if keep else "none", loc=loc, scale_tril=factor, log_density=-mode.value,
            num_iterations=mode.iterations, converged=mode.converged, message=message,
            time_s=time.perf_counter() - start)

    # ------------------------------------------------------------------------------------------------- posterior
    def get_base_dist(self) -> dist.TorchDistribution:
        """The standard normal base ``N(0, I_D)`` (event dim 1) on the guide's device and dtype (or the custom base
        of a callable flow)."""
        flow = self._require_flow()
        if flow.base is not None:
            return base_distribution(flow)  # a trainable base: the distribution its forward() returns
        zeros = torch.zeros(self.latent_dim, device=flow._ref.device, dtype=flow._ref.dtype)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def get_transform(self, *args: Any, **kwargs: Any) -> FlowChain:
        """The whole map ``u = loc + scale ⊙ T(z)`` as a torch ``Transform`` (exact inverse), as ``NeuTraReparam``
        needs."""
        return self._require_flow().transform()

    def get_posterior(self, *args: Any, **kwargs: Any) -> FlowDistribution:
        """The guide's distribution over the unconstrained latent vector ``u`` (a :class:`FlowDistribution`; a
        :class:`PathFlowDistribution` with ``stick_the_landing=True``)."""
        flow = self._require_flow()
        return PathFlowDistribution(flow) if self.stick_the_landing else flow()

    def _require_flow(self) -> Flow:
        if self.prototype_trace is None:
            raise RuntimeError("AutoFlowGuide is built on its first call: call guide(*args) (or run one SVI step) "
                               "with the model's arguments first")
        flow = self.flow  # attribute access through PyroModule registers the parameters with Pyro
        if self._pyro_context.active:  # inside a call, as PyroModule takes the store's values for its own
            _adopt_store_values(self._pyro_get_fullname("flow"), flow)
        return flow

    # ------------------------------------------------------------------------------------------------- summaries
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
        flow = self._require_flow()
        n = int(self.num_quantile_samples)
        u = chain_forward(list(flow.transforms), base_draws(flow, n, self.latent_dim), None)[0].sort(0).values
        pos = q.to(u) * (n - 1)
        lo = pos.floor().long().clamp(0, n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        frac = (pos - lo.to(pos))[:, None]
        latent = u[lo] * (1 - frac) + u[hi] * frac
        parts = [{s["name"]: biject_to(s["fn"].support)(v) for s, v in self._unpack_latent(row)} for row in latent]
        return {name: torch.stack([p[name] for p in parts]) for name in parts[0]}

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Posterior median of every latent site (the 0.5 quantile of :meth:`quantiles`), ``{site: value}``."""
        return {name: v[0] for name, v in self.quantiles([0.5]).items()}
