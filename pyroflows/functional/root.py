"""Bracketed root finding for elementwise monotone maps.

Used by every transform whose inverse has no closed form (monotone B-splines, monotone mixtures, planar, Sylvester,
block neural autoregressive flows). The solve runs without autograd; :func:`newton_polish` then takes one Newton
step *with* autograd so that gradients of the inverse follow the implicit function theorem:
``dx/dθ = -(∂f/∂θ) / f'(x)``, ``dx/dy = 1 / f'(x)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor


def default_tol(dtype: torch.dtype) -> float:
    """Absolute tolerance on the solution: a few ulps above the working precision."""
    return 1e-12 if dtype == torch.float64 else 1e-6


@torch.no_grad()
def bisect_increasing(
    fn: Callable[[Tensor], Tensor],
    target: Tensor,
    lo: Tensor,
    hi: Tensor,
    *,
    tol: float | None = None,
    max_iter: int = 200,
    max_expand: int = 64,
) -> Tensor:
    """Solve ``fn(x) = target`` elementwise for an increasing ``fn`` by bisection.

    ``lo``/``hi`` are initial guesses of a bracket; they are widened by doubling until they bracket the root (an
    increasing map onto the reals always has one). Iterates until the bracket is narrower than ``tol`` (absolute,
    scaled by ``1 + |x|``) and raises ``RuntimeError`` if no bracket or no convergence is reached.
    """
    target = target.detach()
    lo, hi = torch.broadcast_tensors(lo.detach().to(target.dtype), hi.detach().to(target.dtype))
    lo, hi = torch.broadcast_tensors(lo, hi, target)[:2]
    lo, hi = lo.clone(), hi.clone()
    tol = default_tol(target.dtype) if tol is None else tol
    width = (hi - lo).abs().clamp_min(1.0)
    for _ in range(max_expand):
        below = fn(lo) > target
        above = fn(hi) < target
        if not bool(below.any() or above.any()):
            break
        lo = torch.where(below, lo - width, lo)
        hi = torch.where(above, hi + width, hi)
        width = width * 2
    else:
        raise RuntimeError("bisect_increasing: could not bracket the root; is the map increasing and onto?")
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        go_right = fn(mid) < target
        lo = torch.where(go_right, mid, lo)
        hi = torch.where(go_right, hi, mid)
        if bool(((hi - lo) <= tol * (1 + mid.abs())).all()):
            break
    return 0.5 * (lo + hi)


def newton_polish(fn_and_deriv: Callable[[Tensor], tuple[Tensor, Tensor]], x: Tensor, target: Tensor) -> Tensor:
    """One Newton step from a converged root, differentiable through ``fn``'s parameters and ``target``.

    The value changes by at most the solver tolerance; the gradient equals the implicit-function gradient.
    """
    x = x.detach()
    value, deriv = fn_and_deriv(x)
    return x - (value - target) / deriv.detach()
