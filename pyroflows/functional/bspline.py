"""Monotone quadratic B-splines with C¹-matched linear tails.

On ``[-bound, bound]``, split into ``K`` equal intervals of width ``h = 2·bound / K``, the map is a uniform quadratic
B-spline ``S(x) = Σ_{i=0}^{K+1} c_i N_i(x)`` with strictly increasing coefficients ``c_0 < c_1 < … < c_{K+1}``.
Since ``S'(x) = Σ_i (c_i - c_{i-1})/h · N_i^{(1)}(x)`` with non-negative degree-1 basis functions ``N_i^{(1)}`` that sum
to one, positive coefficient increments give ``S' > 0`` (a strictly increasing map). Outside the bound the map
continues along its tangent at ``±bound`` (C¹), so it is a bijection of R whose values and gradients stay finite
arbitrarily far out.

Why quadratic: on interval ``j`` (local coordinate ``u ∈ [0, 1]``) the spline is
``S = v_j + h (s_j u + (s_{j+1} - s_j) u² / 2)``, where ``s_j = (c_{j+1} - c_j)/h > 0`` is the slope at knot ``j``
and ``v_j = (c_j + c_{j+1})/2`` the value there. The derivative is the piecewise-linear interpolation of the positive
knot slopes, so monotonicity is exact and easy to check, and the inverse is the root of a quadratic (closed form, no
iterative solve). A cubic B-spline would be C² but would need a numerical inverse.

Raw parameters (last axis, ``K + 2`` of them): ``[raw_increments (K + 1) | shift]``. Increments are
``δ_i = h · (MIN_SLOPE + softplus(raw_i + c))`` with ``c`` chosen so that ``raw = 0`` gives ``δ_i = h``;
coefficients are ``c = shift + C - mean(C)`` with ``C = [0, cumsum(δ)]``. All-zero raw parameters give exactly the
identity on R (``c_i = -bound + (i - ½) h``).

References: C. de Boor, "A Practical Guide to Splines" (1978) for B-splines; monotone spline flows as in
Durkan et al. 2019, "Neural Spline Flows" (linear tails).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

MIN_SLOPE = 1e-3
# MIN_SLOPE + softplus(0 + _SLOPE_SHIFT) == 1: raw zeros are the identity.
_SLOPE_SHIFT = math.log(math.expm1(1.0 - MIN_SLOPE))


def num_params(count_bins: int) -> int:
    """Number of raw parameters per element for ``count_bins`` intervals: ``count_bins + 2``."""
    return count_bins + 2


def bspline_coefficients(params: Tensor, bound: float) -> Tensor:
    """Strictly increasing B-spline coefficients ``(..., K + 2)`` from raw parameters ``(..., K + 2)``.

    ``c = shift + C - mean(C)``, ``C = [0, cumsum(h · (MIN_SLOPE + softplus(raw + c₀)))]``.
    """
    k = params.shape[-1] - 2
    h = 2.0 * bound / k
    inc = h * (MIN_SLOPE + F.softplus(params[..., :-1] + _SLOPE_SHIFT))
    cum = F.pad(torch.cumsum(inc, dim=-1), (1, 0))
    return params[..., -1:] + cum - cum.mean(dim=-1, keepdim=True)


def bspline_knots(params: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Values ``v`` and slopes ``s`` of the spline at the ``K + 1`` knots ``-bound + j·h``, each ``(..., K + 1)``.

    ``v_j = (c_j + c_{j+1}) / 2`` and ``s_j = (c_{j+1} - c_j) / h``.
    """
    c = bspline_coefficients(params, bound)
    v = 0.5 * (c[..., :-1] + c[..., 1:])
    s = MIN_SLOPE + F.softplus(params[..., :-1] + _SLOPE_SHIFT)  # == (c_{j+1} - c_j) / h, without cancellation
    return v, s


def _broadcast(z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    shape = torch.broadcast_shapes(z.shape, params.shape[:-1])
    return z.expand(shape), params.expand(shape + params.shape[-1:])


def _clamp_unit(u: Tensor) -> Tensor:
    """Clamp rounding excursions into ``[0, 1]`` without cutting the gradient (a hard clamp zeroes it at a knot)."""
    return u + (u.clamp(0, 1) - u).detach()


def _gather(t: Tensor, idx: Tensor) -> Tensor:
    return torch.gather(t, -1, idx.unsqueeze(-1)).squeeze(-1)


def bspline_forward(x: Tensor, params: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """``y = S(x)`` and ``log S'(x)`` elementwise; ``params`` broadcasts to ``x.shape + (K + 2,)``.

    Inside: ``y = v_j + h (s_j u + (s_{j+1} - s_j) u²/2)``, ``S' = s_j (1 - u) + s_{j+1} u``; outside: the tangent
    line at ``±bound``.

    Example:
        >>> y, ladj = bspline_forward(torch.randn(4), torch.zeros(4, 10), 5.0)  # identity, ladj == 0
    """
    x, params = _broadcast(x, params)
    k = params.shape[-1] - 2
    h = 2.0 * bound / k
    v, s = bspline_knots(params, bound)
    xc = x.clamp(-bound, bound)
    t = (xc + bound) / h
    j = t.floor().clamp(0, k - 1).long()
    u = _clamp_unit(t - j.to(t.dtype))
    v0, s0, s1 = _gather(v, j), _gather(s, j), _gather(s, j + 1)
    y_in = v0 + h * u * (s0 + 0.5 * (s1 - s0) * u)
    d_in = s0 + (s1 - s0) * u
    lo, hi = x < -bound, x > bound
    s_lo, s_hi = s[..., 0], s[..., -1]
    y = torch.where(lo, v[..., 0] + s_lo * (x + bound), torch.where(hi, v[..., -1] + s_hi * (x - bound), y_in))
    d = torch.where(lo, s_lo, torch.where(hi, s_hi, d_in))
    return y, torch.log(d)


def bspline_inverse(y: Tensor, params: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """``x = S⁻¹(y)`` in closed form and ``log S'(x)`` (the FORWARD log-derivative at the solution).

    In interval ``j`` the local coordinate solves ``a u² + b u = r`` with ``a = h (s_{j+1} - s_j)/2``, ``b = h s_j``,
    ``r = y - v_j ≥ 0``; the cancellation-free root is ``u = 2r / (b + sqrt(b² + 4 a r))``.
    """
    y, params = _broadcast(y, params)
    k = params.shape[-1] - 2
    h = 2.0 * bound / k
    v, s = bspline_knots(params, bound)
    v_lo, v_hi = v[..., 0], v[..., -1]
    lo, hi = y < v_lo, y > v_hi
    yc = torch.where(lo, v_lo, torch.where(hi, v_hi, y))  # unlike min/max, passes the gradient to y at a tie
    j = (yc.unsqueeze(-1) >= v[..., 1:-1]).sum(-1)
    v0, s0, s1 = _gather(v, j), _gather(s, j), _gather(s, j + 1)
    r = (yc - v0).clamp_min(0)
    a = 0.5 * h * (s1 - s0)
    b = h * s0
    disc = (b * b + 4 * a * r).clamp_min(torch.finfo(b.dtype).tiny)  # > 0 anyway; keeps the unused branch finite
    u = _clamp_unit(2 * r / (b + torch.sqrt(disc)))
    x_in = -bound + h * (j.to(u.dtype) + u)
    d_in = s0 + (s1 - s0) * u
    s_lo, s_hi = s[..., 0], s[..., -1]
    x = torch.where(lo, -bound + (y - v_lo) / s_lo, torch.where(hi, bound + (y - v_hi) / s_hi, x_in))
    d = torch.where(lo, s_lo, torch.where(hi, s_hi, d_in))
    return x, torch.log(d)
