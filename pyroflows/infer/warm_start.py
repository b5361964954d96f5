"""The warm start of :class:`~pyroflows.infer.AutoFlowGuide`: the mode of ``log p(u)`` by L-BFGS and the Hessian
there, both in float64 whatever the model's dtype, and the Monte Carlo ELBO that compares starting flows.

The algebra that turns the Hessian into the guide's layers is backend-free (:mod:`flowcommon.guide`).

References: Liu & Nocedal (1989), "On the limited memory BFGS method for large scale optimization"; MacKay (2003),
"Information Theory, Inference, and Learning Algorithms", ch. 27 (Laplace's method).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pyro import poutine
from torch.distributions import biject_to

from flowcommon import guide as common

from ..flows.core import Flow, base_distribution, base_log_prob

Tensor = torch.Tensor
_LOW_PRECISION = (torch.float16, torch.bfloat16, torch.float32)


@dataclass
class Mode:
    """What :func:`find_mode` found: the best point ``loc`` (float64), ``-log p`` there, the search's outcome, and for
    ``"laplace"`` the lower Cholesky factor of ``H⁻¹`` (NumPy float64; ``None`` where it fell back to ``"map"``)."""

    loc: Tensor
    value: float
    iterations: int
    converged: bool
    message: str
    method: str
    factor: np.ndarray | None
    floored: int


def neg_log_density(model: Callable, unpack: Callable[[Tensor], Iterable], args: tuple, kwargs: dict
                    ) -> Callable[[Tensor], Tensor]:
    """``u -> -log p(u)`` for one unconstrained latent vector ``u`` of shape ``(D,)``: the model's log joint at
    ``x = biject_to(support)(u)`` plus ``log|det ∂x/∂u|`` (``unpack``: the guide's ``_unpack_latent``)."""

    def fn(u: Tensor) -> Tensor:
        values, log_jac = {}, u.new_zeros(())
        for site, unconstrained in unpack(u):
            transform = biject_to(site["fn"].support)
            value = transform(unconstrained)
            values[site["name"]] = value
            log_jac = log_jac + transform.log_abs_det_jacobian(unconstrained, value).sum()
        with poutine.block():  # invisible to the handlers around the guide (SVI's traces, JIT's param capture)
            trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
        return -(trace.log_prob_sum() + log_jac)

    return fn


def _to_float64(value: Any) -> Any:
    """``value`` with its low-precision floating tensors (also inside tuples, lists and dicts) in float64."""
    if isinstance(value, Tensor):
        return value.double() if value.dtype in _LOW_PRECISION else value
    if type(value) in (tuple, list):
        return type(value)(_to_float64(v) for v in value)
    if type(value) is dict:
        return {k: _to_float64(v) for k, v in value.items()}
    return value


def float64_density(model: Callable, unpack: Callable, args: tuple, kwargs: dict, u0: Tensor
                    ) -> tuple[Callable[[Tensor], Tensor], Tensor, str]:
    """``(-log p, starting point, note)`` for the search, in float64 where the model runs so: ``u`` in float64 and the
    model's floating tensor arguments cast to float64 (its own constants follow torch's type promotion), else the
    arguments as given, else ``u`` in the model's dtype (e.g. a float32 network applied to a latent; ``note`` says
    so). Errors other than dtype mismatches (``TypeError``/``RuntimeError``) at the start propagate."""
    for a, k in ((_to_float64(args), _to_float64(kwargs)), (args, kwargs)):
        fn, u = neg_log_density(model, unpack, a, k), u0.detach().to(torch.float64)
        try:
            with torch.no_grad():
                fn(u)
        except (TypeError, RuntimeError):
            continue
        return fn, u, ""
    note = f" (searched in {u0.dtype}: the model does not run in float64)"
    return neg_log_density(model, unpack, args, kwargs), u0.detach(), note


class _NonFinite(Exception):
    """Raised inside the L-BFGS closure when ``log p(u)`` or its gradient is not finite."""


def _value_and_grad(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """``fn(x)`` and its gradient; a ``ValueError`` naming the fix where ``fn`` does not depend on ``x`` at all."""
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        v = fn(xg)
        if not v.requires_grad:
            raise common.FlatDensityError(common.FLAT_DENSITY_MESSAGE)
        (g,) = torch.autograd.grad(v, xg)
    return v.detach(), g.detach()


def minimize_lbfgs(fn: Callable[[Tensor], Tensor], u0: Tensor, num_steps: int
                   ) -> tuple[Tensor, float, Tensor, int, int, str]:
    """Minimise ``fn`` from ``u0`` with L-BFGS (strong Wolfe line search), keeping the best point (the lowest value;
    of equal values, the one with the smaller gradient).

    Stops when max |∇fn| <= ``GTOL``, when ``fn`` no longer decreases (the best value not improved by ``FTOL_EPS``
    machine epsilons, relative, in ``PATIENCE`` iterations), after ``num_steps`` iterations, or at the first point
    (line-search trials included: torch's strong Wolfe search cannot step back from them) where ``fn`` or its gradient
    is not finite (the model raising a ``ValueError`` there counts as not finite). Returns ``(best u, fn(best u), its
    gradient, iterations, exit code, what was not finite)``, exit codes as in :mod:`flowcommon.guide`."""
    eps = torch.finfo(u0.dtype).eps
    u = u0.detach().clone().requires_grad_(True)
    # one iteration per step() (the history persists in the optimizer's state), so that the stopping rule, the best
    # point and non-finite values are handled here; max_eval - 1 is the line search's budget of evaluations
    opt = torch.optim.LBFGS([u], lr=1.0, max_iter=1, max_eval=1 + common.LINE_SEARCH_EVALS,
                            history_size=common.LBFGS_HISTORY, tolerance_grad=0.0, tolerance_change=0.0,
                            line_search_fn="strong_wolfe")
    cache: dict[str, Tensor] = {}

    def evaluate(x: Tensor) -> tuple[Tensor, Tensor]:
        if "u" in cache and torch.equal(cache["u"], x):
            return cache["v"], cache["g"]
        try:
            v, g = _value_and_grad(fn, x)
        except ValueError as err:  # e.g. a distribution's argument check far outside the support
            raise _NonFinite(f"the model raised {type(err).__name__}: {err}") from err
        if not bool(torch.isfinite(v)):
            raise _NonFinite(f"log p(u) = {-float(v)}")
        if not bool(torch.isfinite(g).all()):
            raise _NonFinite("the gradient of log p(u) is not finite")
        cache.update(u=x.detach().clone(), v=v, g=g)
        return v, g

    def closure() -> Tensor:
        v, g = evaluate(u.detach())
        u.grad = g.clone()
        return v

    best_v, best_g = _value_and_grad(fn, u0)  # errors at the starting point are the model's: they propagate
    best_u, best_v, stalls = u0.detach().clone(), float(best_v), 0
    if float(best_g.abs().max()) <= common.GTOL:
        return best_u, best_v, best_g, 0, common.GRAD_SMALL, ""
    for iterations in range(1, num_steps + 1):
        try:
            opt.step(closure)
            v, g = evaluate(u.detach())
        except _NonFinite as err:
            return best_u, best_v, best_g, iterations, common.NOT_FINITE, str(err)
        v = float(v)
        stalls = 0 if v < best_v - common.FTOL_EPS * eps * (1.0 + abs(best_v)) else stalls + 1
        if v < best_v or (v == best_v and float(g.abs().max()) < float(best_g.abs().max())):  # ties: the flatter
            best_u, best_v, best_g = u.detach().clone(), v, g
        if float(g.abs().max()) <= common.GTOL:
            return best_u, best_v, best_g, iterations, common.GRAD_SMALL, ""
        if stalls >= common.PATIENCE:
            return best_u, best_v, best_g, iterations, common.NO_DECREASE, ""
    return best_u, best_v, best_g, num_steps, common.RUNNING, ""


def hessian(fn: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
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


def find_mode(fn: Callable[[Tensor], Tensor], u0: Tensor, method: str, num_steps: int, init_scale: float,
              note: str = "") -> Mode:
    """The mode of ``log p = -fn`` from ``u0`` (:func:`minimize_lbfgs`), and for ``method="laplace"`` the factor of
    ``H⁻¹`` at it (:func:`flowcommon.guide.laplace_outcome`, which falls back to ``"map"`` where it must)."""
    loc, value, grad, iterations, code, detail = minimize_lbfgs(fn, u0, num_steps)
    rel = common.relative_gradient(grad.cpu().numpy(), loc.cpu().numpy(), value)
    converged, message = common.describe_search(code, iterations, num_steps, value, rel, detail)
    factor, floored = None, 0
    if method == "laplace":
        factor, floored, message = common.laplace_outcome(hessian(fn, loc).cpu().numpy(), init_scale, message)
        method = "laplace" if factor is not None else "map"
    return Mode(loc, value, iterations, converged, message + note, method, factor, floored)


def base_draws(flow: Flow, n: int, latent_dim: int) -> Tensor:
    """``n`` base draws of ``flow``; from a generator seeded with ``SEED`` for the standard normal base (the global
    RNG is left alone), from the base itself for a custom one, under the same seed (the global RNG state is
    restored)."""
    ref = flow._ref
    if flow.base is not None:
        with torch.random.fork_rng(devices=[ref.device] if ref.device.type == "cuda" else []):
            torch.manual_seed(common.SEED)
            return base_distribution(flow).sample((n,)).to(ref)
    gen = torch.Generator(device=ref.device).manual_seed(common.SEED)
    return torch.randn(n, latent_dim, generator=gen, device=ref.device, dtype=ref.dtype)


@torch.no_grad()
def start_elbo(flow: Flow, fn: Callable[[Tensor], Tensor], latent_dim: int) -> float:
    """Monte Carlo ELBO ``E_q[log p(u) - log q(u)]`` of a starting flow from ``START_ELBO_DRAWS`` seeded base draws
    (the same draws for every flow compared); ``nan`` where a draw's value is not finite."""
    z = base_draws(flow, common.START_ELBO_DRAWS, latent_dim)
    u, log_det = flow.transform().forward_and_log_det(z)
    log_q = base_log_prob(flow, z) - log_det
    total = 0.0
    for i in range(z.shape[0]):
        try:
            total += float(-fn(u[i]) - log_q[i])
        except ValueError:  # the model's argument checks rejecting a point
            return math.nan
    value = total / z.shape[0]
    return value if math.isfinite(value) else math.nan
