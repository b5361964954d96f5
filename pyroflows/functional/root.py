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
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return _bisect_traced(fn, target, lo, hi, width, tol)
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


#: Fixed iteration counts of the traced solve: doublings of the bracket (it then spans 2^20 times its initial width),
#: and bisection steps, enough to narrow such a bracket of a width up to 2^30 below the dtype's tolerance.
_TRACED_EXPAND = 20
_TRACED_BISECT = {torch.float64: 96, torch.float32: 60, torch.float16: 40, torch.bfloat16: 40}


def _bisect_traced(fn: Callable[[Tensor], Tensor], target: Tensor, lo: Tensor, hi: Tensor, width: Tensor,
                   tol: float) -> Tensor:
    """:func:`bisect_increasing` for ``torch.compile``, ``torch.export`` and ``torch.jit.trace``: the same steps with
    fixed iteration counts and no data-dependent branch (a trace cannot hold one). An entry whose root was not
    bracketed, or whose bracket did not narrow to ``tol``, comes back NaN rather than wrong."""
    for _ in range(_TRACED_EXPAND):
        below = fn(lo) > target
        above = fn(hi) < target
        lo = torch.where(below, lo - width, lo)
        hi = torch.where(above, hi + width, hi)
        width = torch.where(below | above, width * 2, width)
    bracketed = (fn(lo) <= target) & (fn(hi) >= target)
    for _ in range(_TRACED_BISECT.get(target.dtype, 96)):
        mid = 0.5 * (lo + hi)
        go_right = fn(mid) < target
        lo = torch.where(go_right, mid, lo)
        hi = torch.where(go_right, hi, mid)
    mid = 0.5 * (lo + hi)
    converged = bracketed & ((hi - lo) <= tol * (1 + mid.abs()))
    return torch.where(converged, mid, torch.full_like(mid, float("nan")))


def newton_polish(fn_and_deriv: Callable[[Tensor], tuple[Tensor, Tensor]], x: Tensor, target: Tensor) -> Tensor:
    """One Newton step from a converged root, differentiable through ``fn``'s parameters and ``target``.

    The value changes by at most the solver tolerance; the gradient equals the implicit-function gradient.
    """
    x = x.detach()
    value, deriv = fn_and_deriv(x)
    return x - (value - target) / deriv.detach()
