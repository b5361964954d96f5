"""``AutoFlowGuide``: a normalizing-flow posterior over all continuous latent sites of a Pyro model."""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from pyro.params.param_store import param_with_module_name
from torch.distributions import biject_to

from ..flows import recipes
from ..flows.core import Flow, FlowDistribution, base_log_prob
from ..functional.affine import MIN_SCALE, affine_scale_inverse
from ..nn.made import MADE
from ..nn.mlp import MLP
from ..transforms.base import FlowChain, chain_forward
from ..transforms.linear import DiagonalAffine, LULinear

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
#: Warm start (:meth:`AutoFlowGuide.warm_start`): methods, L-BFGS iterations, L-BFGS memory, the largest latent size
#: for which ``"laplace"`` forms the D x D Hessian, and the stopping rule: max |gradient| <= ``_WARM_START_GTOL``, or
#: the best -log p not lowered by ``_WARM_START_FTOL_EPS`` machine epsilons (relative) in ``_WARM_START_PATIENCE``
#: iterations (no more progress at this precision).
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


@dataclass
class WarmStart:
    """What :meth:`AutoFlowGuide.warm_start` found (the same fields in numpyroflows).

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
        params: the guide's flow parameters after the warm start, ``{param store name: tensor}``.
        time_s: wall time of the warm start (search, Hessian and placement).
    """

    method: str
    loc: Tensor
    scale_tril: Tensor | None
    log_density: float
    num_iterations: int
    converged: bool
    message: str
    params: dict[str, Tensor] = field(default_factory=dict)
    time_s: float = 0.0


class _NonFinite(Exception):
    """Raised inside the L-BFGS closure when ``log p(u)`` or its gradient is not finite."""


def _minimize_lbfgs(fn: Callable[[Tensor], Tensor], u0: Tensor, num_steps: int
                    ) -> tuple[Tensor, float, int, bool, str]:
    """Minimise ``fn`` from ``u0`` with L-BFGS (strong Wolfe line search), keeping the best point.

    Stops when max |∇fn| <= ``_WARM_START_GTOL``, when ``fn`` no longer decreases (the best value not improved by
    ``_WARM_START_FTOL_EPS`` machine epsilons, relative, in ``_WARM_START_PATIENCE`` iterations), after
    ``num_steps`` iterations, or at the first point (line-search trials included: torch's strong Wolfe search cannot
    step back from them) where ``fn`` or its gradient is not finite (the model raising a ``ValueError`` there counts
    as not finite). Returns ``(best u, fn(best u), iterations, converged, message)``."""
    eps = torch.finfo(u0.dtype).eps
    u = u0.detach().clone().requires_grad_(True)
    # one iteration per step() (the history persists in the optimizer's state), so that the stopping rule, the best
    # point and non-finite values are handled here; max_eval - 1 is the line search's budget of evaluations
    opt = torch.optim.LBFGS([u], lr=1.0, max_iter=1, max_eval=1 + _LINE_SEARCH_EVALS,
                            history_size=_WARM_START_HISTORY, tolerance_grad=0.0, tolerance_change=0.0,
                            line_search_fn="strong_wolfe")
    cache: dict[str, Tensor] = {}

    def evaluate(x: Tensor) -> tuple[Tensor, Tensor]:
        if "u" in cache and torch.equal(cache["u"], x):
            return cache["v"], cache["g"]
        with torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            try:
                v = fn(xg)
            except ValueError as err:  # e.g. a distribution's argument check far outside the support
                raise _NonFinite(f"the model raised {type(err).__name__}: {err}") from err
            if not bool(torch.isfinite(v)):
                raise _NonFinite(f"log p(u) = {-float(v)}")
            (g,) = torch.autograd.grad(v, xg, allow_unused=True)
        g = torch.zeros_like(xg) if g is None else g
        if not bool(torch.isfinite(g).all()):
            raise _NonFinite("the gradient of log p(u) is not finite")
        cache.update(u=x.detach().clone(), v=v.detach(), g=g.detach())
        return cache["v"], cache["g"]

    def closure() -> Tensor:
        v, g = evaluate(u.detach())
        u.grad = g.clone()
        return v

    best_v, g = evaluate(u0.detach())  # errors at the starting point are the model's: they propagate
    best_u, best_v, stalls = u0.detach().clone(), float(best_v), 0
    iterations, converged, message = 0, False, f"stopped after num_steps={num_steps} iterations"
    if float(g.abs().max()) <= _WARM_START_GTOL:
        return best_u, best_v, 0, True, "the starting point is already a stationary point"
    for iterations in range(1, num_steps + 1):
        try:
            opt.step(closure)
            v, g = evaluate(u.detach())
        except _NonFinite as err:
            message = (f"stopped at iteration {iterations}: not finite at a point the search tried ({err}); kept the "
                       f"best point found (log p = {-best_v:.6g})")
            warnings.warn(f"AutoFlowGuide.warm_start: {message}. Check the model's supports and priors, or start "
                          "from a better point with init_loc_fn=init_to_value(...)", RuntimeWarning, stacklevel=4)
            break
        v = float(v)
        stalls = 0 if v < best_v - _WARM_START_FTOL_EPS * eps * (1.0 + abs(best_v)) else stalls + 1
        if v < best_v:
            best_u, best_v = u.detach().clone(), v
        if float(g.abs().max()) <= _WARM_START_GTOL:
            converged, message = True, f"converged after {iterations} iterations (gradient below tolerance)"
            break
        if stalls >= _WARM_START_PATIENCE:
            converged, message = True, f"converged after {iterations} iterations (no further decrease)"
            break
    return best_u, best_v, iterations, converged, message


def _hessian(fn: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
    """The Hessian of ``fn`` at ``u`` by autograd (one batched reverse pass over the gradient, or one pass per row
    where batching is not supported)."""
    with torch.enable_grad():
        x = u.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(x), x, create_graph=True)
        if not g.requires_grad:  # the gradient does not depend on u: fn is linear in u
            return torch.zeros(x.numel(), x.numel(), dtype=x.dtype, device=x.device)
        eye = torch.eye(x.numel(), dtype=x.dtype, device=x.device)
        try:
            (h,) = torch.autograd.grad(g, x, grad_outputs=eye, is_grads_batched=True, retain_graph=True,
                                       allow_unused=True)
        except (RuntimeError, NotImplementedError):  # an operation without a batching rule
            rows = [torch.autograd.grad(g[i], x, retain_graph=True, allow_unused=True)[0] for i in range(x.numel())]
            h = torch.stack([torch.zeros_like(x) if r is None else r for r in rows])
    return torch.zeros_like(eye) if h is None else h.detach()


def _laplace_factor(hessian: Tensor, init_scale: float) -> tuple[Tensor, int]:
    """Lower-triangular ``C`` with ``C Cᵀ = H⁻¹`` (float64), and how many eigenvalues of ``H`` were floored.

    ``H`` is symmetrised; eigenvalues that are not positive, or below ``_EIG_RTOL`` times the largest, are set to
    ``1 / init_scale²`` (the guide's default width in those directions). ``C = J M⁻ᵀ J`` with ``M = chol(J H J)`` and
    ``J`` the reversal: a lower-triangular factor of ``H⁻¹`` without forming the inverse."""
    h = hessian.double()
    h = 0.5 * (h + h.T)
    lam, vec = torch.linalg.eigh(h)
    top = float(lam.max())
    bad = ~(lam > _EIG_RTOL * top) if top > 0 else torch.ones_like(lam, dtype=torch.bool)
    floored = int(bad.sum())
    if floored:
        lam = torch.where(bad, torch.full_like(lam, 1.0 / init_scale**2), lam)
        h = (vec * lam) @ vec.T
        h = 0.5 * (h + h.T)
    m = torch.linalg.cholesky(h.flip(0, 1))
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    m_inv = torch.linalg.solve_triangular(m, eye, upper=False)
    return m_inv.T.flip(0, 1), floored


def _lu_placement(factor: Tensor, mean: Tensor, sd: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Initial values of the LU layer and the outer scale so that ``u = loc + s' ⊙ (W x + b)`` with ``x = T(z)``
    (mean ``mean``, sd ``sd`` per coordinate) has covariance ``C Cᵀ`` for ``T`` at the identity (float64).

    ``W = diag(1/s') C diag(1/sd)`` is lower triangular, ``W = L diag(w)`` with ``L`` unit lower triangular, so it is
    an ``LULinear`` with the identity permutation, ``U = diag(w)``; ``b = -W mean``. ``s'`` is the marginal sd
    ``‖C_i‖`` lowered where needed so that ``w_i >= _LU_DIAG_TARGET``, and both stay >= ``_LAYER_FLOOR``. Returns
    ``(packed, w, b, s', number of w_i that had to be clamped up to the floor)``."""
    c = factor.double()
    mean, sd = mean.double(), sd.double()
    p = c.diagonal() / sd  # the product s'_i w_i, fixed by C
    marginal = c.norm(dim=1)
    outer = torch.minimum(marginal, p / _LU_DIAG_TARGET).clamp_min(_LAYER_FLOOR)
    w_mat = c / outer[:, None] / sd[None, :]
    w = w_mat.diagonal()
    clamped = int((w < _LAYER_FLOOR).sum())
    w_safe = w.clamp_min(_LAYER_FLOOR)
    lower = torch.tril(w_mat / w[None, :], -1)
    weight = (lower + torch.eye(len(w), dtype=c.dtype, device=c.device)) * w_safe[None, :]
    return lower, w_safe, -(weight @ mean), outer, clamped


@torch.no_grad()
def _zero_conditioner_outputs(layers: Sequence[torch.nn.Module]) -> None:
    """Zero the output weights of the conditioners (the MADE of autoregressive layers, the MLP of coupling layers), so
    that each such layer computes exactly its output bias: the transformer's identity parameters in every recipe that
    starts at the identity. The recipes draw these weights in ``±1e-3`` so that gradients reach every weight at once;
    from zero, SVI's first step moves the output weights and the hidden layers follow (as Glow's zero-initialised last
    layers do)."""
    for t in layers:
        made = getattr(t, "made", None)
        if isinstance(made, MADE):  # flat layout [W_1, b_1, ..., W_L, b_L]
            stop = sum(made._sizes[:-1])
            made.flat[stop - made._sizes[-2]: stop] = 0.0
        net = getattr(t, "net", None)
        if isinstance(net, MLP):
            last = net.layers[-1] if len(net.layers) else net.input_layer
            if last is not None:
                last.weight.zero_()


class AutoFlowGuide(AutoContinuous):
    """A Pyro autoguide whose posterior over the unconstrained latent vector is a normalizing flow.

    All continuous latent sites are mapped to unconstrained space with ``biject_to(support).inv`` and concatenated
    into ``u ∈ R^D`` (the log-Jacobian of each constraint enters exactly, as in every ``AutoContinuous`` guide). The
    posterior over ``u`` is ``u = loc + scale ⊙ T(z)``, ``z ~ N(0, I_D)``, where ``T`` is the chosen flow and the last
    layer is a learnable :class:`~pyroflows.transforms.linear.DiagonalAffine`; the whole chain is one
    :class:`~pyroflows.flows.Flow`, so scoring the guide's own sample costs no inverse pass. ``loc`` and ``scale`` start
    so that the draws of ``u`` have mean ``init_loc`` (from ``init_loc_fn``) and standard deviation ``init_scale`` per
    coordinate; for the recipes that start at the identity (all but bnaf, radial, sylvester) this is
    ``loc = init_loc``, ``scale = init_scale``, i.e. the guide starts as ``AutoNormal`` does.

    Choosing the flow: affine ``"iaf"`` (the default) samples and scores in one pass per layer and can make the scale
    of one coordinate depend on others, which funnel-shaped posteriors need. The spline flows (``"spline_iaf"``,
    ``"nsf"``, ``"spline_coupling"``) map ``[-bound, bound]`` onto itself (identity outside), so they reshape
    marginals but cannot stretch a coordinate by a factor that depends on another one: on Neal's funnel they recover
    about a third of ``sd(v)`` where affine IAF recovers two thirds or more (``benchmarks/guide_choice_pyro.py``).
    ``"maf"`` and ``"nsf"`` sample in ``D`` passes per layer.

    Warm start: on posteriors that are far from ``init_loc`` and badly conditioned (e.g. regressions on unscaled
    predictors with flat priors) SVI spends thousands of steps travelling. :meth:`warm_start` first maximises
    ``log p(u)`` with L-BFGS and places the guide at the mode (``"map"``) or at the Laplace approximation
    ``N(mode, H⁻¹)`` (``"laplace"``, which inserts a full-rank ``LULinear`` layer before the final affine map), then
    SVI refines it. It is explicit: without it the guide starts at ``N(init_loc, init_scale²)``.

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
        warm_start: ``None`` (default), ``"map"`` or ``"laplace"``: run :meth:`warm_start` with this method (and
            default settings) when the guide is built on its first call, e.g. inside the first ``svi.step`` (works
            with ``Trace_ELBO`` and ``JitTrace_ELBO``).
        **flow_kwargs: further arguments of the recipe (``count_bins``, ``bound``, ``hidden_factor``, ...).

    Example:
        >>> guide = AutoFlowGuide(model, "spline_iaf", num_transforms=2, count_bins=8)
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        >>> guide.warm_start(data, method="laplace")   # optional: start SVI at the Laplace approximation
        >>> for _ in range(1000): svi.step(data)
        >>> guide.quantiles([0.05, 0.5, 0.95]); Predictive(model, guide=guide, num_samples=100)(data)
        >>> nuts = NUTS(poutine.reparam(model, config=lambda _: NeuTraReparam(guide)))   # NeuTra HMC

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
        self._warm_start_option = warm_start
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

    def _prepare_prototype(self, *args: Any, **kwargs: Any) -> None:
        """Pyro's prototype trace (sites, shapes, ``init_loc``) and the guide's site checks; no flow yet."""
        try:
            super()._setup_prototype(*args, **kwargs)
            self._check_sites(self.prototype_trace)
        except (ValueError, RuntimeError, NotImplementedError):
            trace, self.prototype_trace = self.prototype_trace, None  # so that the next call starts afresh
            if trace is not None:
                self._check_sites(trace)  # raises the guide's own message where it has one
            raise

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        self._prepare_prototype(*args, **kwargs)
        if self._warm_start_option is None:
            self.flow = self._build_flow(self._init_loc())
        else:
            try:
                self._warm_start(self._warm_start_option, _DEFAULT_WARM_START_STEPS, args, kwargs)
            except Exception:
                self.prototype_trace = None  # so that the next call starts afresh
                raise

    def _build_flow(self, loc: Tensor, factor: Tensor | None = None, exact: bool = False) -> Flow:
        """A fresh flow ``[*recipe layers, (LULinear,) DiagonalAffine]`` placed at ``loc`` with sd ``init_scale``
        (``factor is None``) or at ``N(loc, factor factorᵀ)`` (the LU layer is added). ``exact``: the recipe layers
        start at exactly the identity (:func:`_zero_conditioner_outputs`), as the warm start needs."""
        d = self.latent_dim
        layers = self._build_transform_flow(d)
        if exact:
            _zero_conditioner_outputs(layers.transforms)
        extra = [] if factor is None else [LULinear(d, permutation="identity")]
        flow = Flow([*layers.transforms, *extra, DiagonalAffine(d)], base=layers.base)
        flow.to(device=loc.device, dtype=loc.dtype)  # the guide lives where the model's values live
        self._initialise_affine(flow, loc, factor)
        return flow

    @torch.no_grad()
    def _initialise_affine(self, flow: Flow, init_loc: Tensor, factor: Tensor | None = None) -> None:
        """Set the final layers so that the draws of ``u`` have mean ``init_loc`` and sd ``init_scale`` per
        coordinate, or (with ``factor``, a lower-triangular ``C``) mean ``init_loc`` and covariance ``C Cᵀ``.

        ``T(z)`` (the layers before the final ones) is measured on antithetic draws ``±z`` (fixed seed) and
        standardised per coordinate; for a flow at the identity this is exact: ``shift = init_loc`` and
        ``scale = init_scale``, or ``LULinear`` weight ``diag(1/s') C`` with the identity permutation and the affine
        ``shift = init_loc``, ``scale = s'`` (see :func:`_lu_placement`)."""
        layers = list(flow.transforms)[: -1 if factor is None else -2]
        affine = flow.transforms[-1]
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
        if factor is None:
            scale = self._init_scale / sd
            affine.head.set_value("shift", init_loc - scale * mean)
            affine.head.set_value("raw_scale", affine_scale_inverse(scale))
            return
        lu = flow.transforms[-2]
        packed, diag, shift, outer, clamped = _lu_placement(factor, mean, sd)
        if clamped:
            warnings.warn(f"AutoFlowGuide.warm_start: {clamped} conditional posterior sd(s) are below what the guide's "
                          f"scales can represent ({_LAYER_FLOOR ** 2:.0e} in unconstrained space); they were raised to "
                          "it", RuntimeWarning, stacklevel=4)
        ref = init_loc
        lu.head.set_value("packed", packed.to(ref))
        lu.head.set_value("raw_diag", affine_scale_inverse(diag).to(ref))
        lu.head.set_value("shift", shift.to(ref))
        affine.head.set_value("shift", init_loc)
        affine.head.set_value("raw_scale", affine_scale_inverse(outer).to(ref))

    # ------------------------------------------------------------------------------------------------- warm start
    def warm_start(self, *args: Any, method: str = "laplace", num_steps: int = _DEFAULT_WARM_START_STEPS,
                   **kwargs: Any) -> WarmStart:
        """Place the guide at the mode (``"map"``) or the Laplace approximation (``"laplace"``) of the posterior.

        Maximises ``log p(u)`` (the model's log joint at ``x = biject_to(support)(u)`` plus ``log|det ∂x/∂u|``,
        exactly the density the guide approximates) with L-BFGS and a strong Wolfe line search, from the
        ``init_loc_fn`` point. Then the flow is rebuilt with fresh layers at exactly the identity (their conditioners'
        output weights start at zero instead of ``±1e-3``) and its final layers are set:

        * ``"map"``: the affine shift to the mode; the scale stays ``init_scale`` (no second derivatives, so it
          suits any latent size; use ``"laplace"`` for a covariance);
        * ``"laplace"``: ``H`` = the Hessian of ``-log p(u)`` at the mode (autodiff), ``Σ = H⁻¹`` (eigenvalues of
          ``H`` that are not positive are raised to ``1/init_scale²``, with a warning), and the chain becomes
          ``T -> LULinear (initialised to chol(Σ), identity permutation) -> DiagonalAffine (shift at the mode)``:
          with identity-start flows (all but bnaf, radial, sylvester) the guide at zero SVI steps is exactly
          ``N(mode, Σ)``. The LU layer adds ``D²`` parameters and stays trainable; ``D`` above
          :attr:`laplace_max_dim` (2000) is refused.

        The guide's parameters in Pyro's param store are replaced (entries of an earlier flow of this guide are
        removed, so a later ``svi.step`` trains the new ones; Adam state starts afresh). Run it before the SVI
        loop, with the model's arguments; a non-finite ``log p`` during the search stops it at the best point found,
        with a warning. Nothing is lost: unless the search converged to a clean mode (``"laplace"`` with a
        positive-definite Hessian, kept as is), the placed guide's ELBO (64 seeded draws) is compared with the default
        start's ``N(init_loc, init_scale²)``, and where it is lower or not finite (a funnel, whose ``log p`` grows
        without bound as the scale parameter falls, has no useful mode) the guide keeps the default start, with a
        warning. The
        constructor option ``warm_start=`` runs it on the guide's first call instead.

        Args:
            *args, **kwargs: the model's arguments (``method`` and ``num_steps`` are taken by this method).
            method: ``"laplace"`` (default) or ``"map"``.
            num_steps: maximum number of L-BFGS iterations.

        Returns:
            a :class:`WarmStart` (mode, Cholesky factor of ``Σ``, ``log p`` at the mode, iterations, convergence).

        Example:
            >>> guide = AutoFlowGuide(model)
            >>> ws = guide.warm_start(x, y, method="laplace")
            >>> svi = SVI(model, guide, ClippedAdam({"lr": 1e-2}), Trace_ELBO())
            >>> for _ in range(1000): svi.step(x, y)

        Reference: MacKay (2003), "Information Theory, Inference, and Learning Algorithms", ch. 27 (Laplace's
        method); Liu & Nocedal (1989), "On the limited memory BFGS method for large scale optimization".
        """
        if method not in _WARM_START_METHODS:
            raise ValueError(f"unknown warm start method {method!r}: use 'laplace' or 'map'")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"num_steps must be a non-negative integer, got {num_steps!r}")
        if self.prototype_trace is None:
            self._prepare_prototype(*args, **kwargs)
        try:
            result = self._warm_start(method, num_steps, args, kwargs)
        finally:
            if self.flow is None:  # failed before a flow existed: keep the guide usable with its default start
                self.flow = self._build_flow(self._init_loc())
        with self._pyro_context:
            store = pyro.get_param_store()
            prefix = param_with_module_name(self._pyro_get_fullname("flow"), "")
            for name in [k for k in store.keys() if k.startswith(prefix)]:
                del store[name]  # an earlier flow's values (and layout) must not override the new ones
            flow = self.flow  # PyroModule registers the new parameters here
        result.params = {f"{prefix}{k}": v for k, v in flow.named_parameters()}
        return result

    def _neg_log_density(self, args: tuple, kwargs: dict) -> Callable[[Tensor], Tensor]:
        """``u -> -log p(u)`` for one unconstrained latent vector ``u`` of shape ``(D,)``."""

        def fn(u: Tensor) -> Tensor:
            values, log_jac = {}, u.new_zeros(())
            for site, unconstrained in self._unpack_latent(u):
                transform = biject_to(site["fn"].support)
                value = transform(unconstrained)
                values[site["name"]] = value
                log_jac = log_jac + transform.log_abs_det_jacobian(unconstrained, value).sum()
            with poutine.block():  # invisible to the handlers around the guide (SVI's traces, JIT's param capture)
                trace = poutine.trace(poutine.condition(self.model, data=values)).get_trace(*args, **kwargs)
            return -(trace.log_prob_sum() + log_jac)

        return fn

    def _warm_start(self, method: str, num_steps: int, args: tuple, kwargs: dict) -> WarmStart:
        """Search, Hessian and placement; sets ``self.flow`` (no param-store handling)."""
        start = time.perf_counter()
        d = self.latent_dim
        if method == "laplace" and d > self.laplace_max_dim:
            raise ValueError(f"warm_start(method='laplace') forms the {d} x {d} Hessian and adds {d}² parameters; "
                             f"this model has D = {d} > laplace_max_dim = {self.laplace_max_dim}: use method='map' "
                             "(the mode, no Hessian), or raise AutoFlowGuide.laplace_max_dim if you have the memory")
        fn = self._neg_log_density(args, kwargs)
        loc, value, iterations, converged, message = _minimize_lbfgs(fn, self._init_loc().detach(), num_steps)
        factor, floored = None, 0
        if method == "laplace":
            hess = _hessian(fn, loc)
            failure = None if bool(torch.isfinite(hess).all()) else "is not finite"
            if failure is None:
                try:
                    factor, floored = _laplace_factor(hess, self._init_scale)
                except torch.linalg.LinAlgError:
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
        warm, default = self._build_flow(loc, factor, exact=True), self._build_flow(self._init_loc())
        elbo_warm, elbo_default = (self._start_elbo(f, fn) for f in (warm, default))
        self.flow = warm
        # A clean Laplace start (the search converged, the Hessian positive definite) is kept whatever its ELBO: a
        # start's ELBO does not predict where SVI ends (a Laplace start wider than N(init_loc, init_scale²) scores
        # lower, then trains to a better fit: banana, eight schools), and the check is for modes that are not real
        clean = method == "laplace" and converged and not floored
        if not math.isfinite(elbo_warm) or (not clean and not elbo_warm >= elbo_default):
            self.flow, method, factor = default, "none", None
            message += (f"; the warm start's ELBO ({elbo_warm:.6g}) is below the default start's ({elbo_default:.6g}),"
                        " so the guide keeps its default start N(init_loc, init_scale²)")
            warnings.warn(f"AutoFlowGuide.warm_start: {message}. A posterior without a reachable mode (a funnel, or "
                          "log p unbounded along some direction) has no useful Laplace or MAP start; "
                          "reparameterize the model or choose init_loc_fn", RuntimeWarning, stacklevel=3)
        return WarmStart(method=method, loc=loc, scale_tril=None if factor is None else factor.to(loc),
                         log_density=-value, num_iterations=iterations, converged=converged, message=message,
                         time_s=time.perf_counter() - start)

    @torch.no_grad()
    def _start_elbo(self, flow: Flow, neg_log_density: Callable[[Tensor], Tensor]) -> float:
        """Monte Carlo ELBO ``E_q[log p(u) - log q(u)]`` of a starting flow from ``_START_ELBO_DRAWS`` seeded base
        draws (the same draws for every flow compared); ``nan`` where a draw's value is not finite."""
        z = self._base_draws(flow, _START_ELBO_DRAWS)
        u, log_det = flow.transform().forward_and_log_det(z)
        log_q = base_log_prob(flow, z) - log_det
        total = 0.0
        for i in range(z.shape[0]):
            try:
                total += float(-neg_log_density(u[i]) - log_q[i])
            except ValueError:  # the model's argument checks rejecting a point
                return math.nan
        value = total / z.shape[0]
        return value if math.isfinite(value) else math.nan

    def _base_draws(self, flow: Flow, n: int) -> Tensor:
        """``n`` base draws; from a generator seeded with ``_SEED`` for the standard normal base (the global RNG is
        left alone), from the base itself for a custom one, under the same seed (the global RNG state is restored)."""
        ref = flow._ref
        if flow.base is not None:  # seeded too, with the global RNG state restored afterwards
            with torch.random.fork_rng(devices=[ref.device] if ref.device.type == "cuda" else []):
                torch.manual_seed(_SEED)
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

