"""Monotone quadratic B-splines with C¹-matched linear tails, in JAX.

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

The functions are pure and jit/vmap-able. Formulas, constants and the raw-parameter layout are those of
``pyroflows.functional.bspline``, so raw parameters move between the packages unchanged.

References: C. de Boor, "A Practical Guide to Splines" (1978) for B-splines; monotone spline flows as in
Durkan et al. 2019, "Neural Spline Flows" (linear tails).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

MIN_SLOPE = 1e-3
# MIN_SLOPE + softplus(0 + _SLOPE_SHIFT) == 1: raw zeros are the identity.
_SLOPE_SHIFT = math.log(math.expm1(1.0 - MIN_SLOPE))
_SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus's default: linear above it


def num_params(count_bins: int) -> int:
    """Number of raw parameters per element for ``count_bins`` intervals: ``count_bins + 2``."""
    return count_bins + 2


def _softplus(x: Array) -> Array:
    """``log(1 + eˣ)``, exactly ``x`` above 20 (as ``torch.nn.functional.softplus``, so values match pyroflows to
    rounding); the large branch stays finite."""
    return jnp.where(x > _SOFTPLUS_THRESHOLD, x, jnp.log1p(jnp.exp(jnp.minimum(x, _SOFTPLUS_THRESHOLD))))


def _clamp(x: Array, lo: float, hi: float) -> Array:
    """``clamp(x, lo, hi)`` with gradient 1 on ``[lo, hi]`` including the ends (``jnp.clip`` gives ½ or 0 there)."""
    return jnp.where(x < lo, lo, jnp.where(x > hi, hi, x))


def _clamp_unit(u: Array) -> Array:
    """Clamp rounding excursions into ``[0, 1]`` on the value only (a hard clamp would zero the gradient at a knot)."""
    return u + lax.stop_gradient(jnp.clip(u, 0.0, 1.0) - u)


def _gather(t: Array, idx: Array) -> Array:
    return jnp.take_along_axis(t, idx[..., None], axis=-1)[..., 0]


def _broadcast(z: Array, params: Array) -> tuple[Array, Array]:
    z, params = jnp.asarray(z), jnp.asarray(params)
    shape = jnp.broadcast_shapes(z.shape, params.shape[:-1])
    return jnp.broadcast_to(z, shape), jnp.broadcast_to(params, shape + params.shape[-1:])


def bspline_coefficients(params: Array, bound: float) -> Array:
    """Strictly increasing B-spline coefficients ``(..., K + 2)`` from raw parameters ``(..., K + 2)``.

    ``c = shift + C - mean(C)``, ``C = [0, cumsum(h · (MIN_SLOPE + softplus(raw + c₀)))]`` with ``h = 2·bound / K``
    and ``c₀`` such that raw zeros give increments ``h`` (the identity); ``shift``, the last raw parameter, moves all
    coefficients together.
    """
    k = params.shape[-1] - 2
    h = 2.0 * bound / k
    inc = h * (MIN_SLOPE + _softplus(params[..., :-1] + _SLOPE_SHIFT))
    cum = jnp.concatenate([jnp.zeros_like(inc[..., :1]), jnp.cumsum(inc, axis=-1)], axis=-1)
    return params[..., -1:] + cum - jnp.mean(cum, axis=-1, keepdims=True)


def bspline_knots(params: Array, bound: float) -> tuple[Array, Array]:
    """Values ``v`` and slopes ``s`` of the spline at the ``K + 1`` knots ``-bound + j·h``, each ``(..., K + 1)``.

    ``v_j = (c_j + c_{j+1}) / 2`` and ``s_j = (c_{j+1} - c_j) / h``; the slopes are taken from the raw increments
    directly (``MIN_SLOPE + softplus(raw + c₀)``), not by subtracting coefficients, so they carry no cancellation.
    """
    c = bspline_coefficients(params, bound)
    v = 0.5 * (c[..., :-1] + c[..., 1:])
    s = MIN_SLOPE + _softplus(params[..., :-1] + _SLOPE_SHIFT)  # == (c_{j+1} - c_j) / h, without cancellation
    return v, s


def bspline_forward(x: Array, params: Array, bound: float) -> tuple[Array, Array]:
    """``y = S(x)`` and ``log S'(x)`` elementwise; ``params`` broadcasts to ``x.shape + (K + 2,)``.

    Inside: ``y = v_j + h (s_j u + (s_{j+1} - s_j) u²/2)``, ``S' = s_j (1 - u) + s_{j+1} u``; outside: the tangent
    line at ``±bound``. Both outputs have the broadcast batch shape; ``log S' ≥ log MIN_SLOPE``, finite for any
    input.

    Example:
        >>> y, ladj = bspline_forward(jnp.linspace(-2, 2, 4), jnp.zeros((4, 10)), 5.0)  # identity, ladj == 0
    """
    x, params = _broadcast(x, params)
    k = params.shape[-1] - 2
    h = 2.0 * bound / k
    v, s = bspline_knots(params, bound)
    xc = _clamp(x, -bound, bound)
    t = (xc + bound) / h
    j = jnp.clip(jnp.floor(lax.stop_gradient(t)), 0, k - 1).astype(jnp.int32)
    u = _clamp_unit(t - j.astype(t.dtype))
    v0, s0, s1 = _gather(v, j), _gather(s, j), _gather(s, j + 1)
    y_in = v0 + h * u * (s0 + 0.5 * (s1 - s0) * u)
    d_in = s0 + (s1 - s0) * u
    lo, hi = x < -bound, x > bound
    s_lo, s_hi = s[..., 0], s[..., -1]
    y = jnp.where(lo, v[..., 0] + s_lo * (x + bound), jnp.where(hi, v[..., -1] + s_hi * (x - bound), y_in))
    d = jnp.where(lo, s_lo, jnp.where(hi, s_hi, d_in))
    return y, jnp.log(d)


def bspline_inverse(y: Array, params: Array, bound: float) -> tuple[Array, Array]:
    """``x = S⁻¹(y)`` in closed form and ``log S'(x)`` (the FORWARD log-derivative at the solution).

    In interval ``j`` the local coordinate solves ``a u² + b u = r`` with ``a = h (s_{j+1} - s_j)/2``, ``b = h s_j``,
    ``r = y - v_j ≥ 0``; the cancellation-free root is ``u = 2r / (b + sqrt(b² + 4 a r))``. Outside
    ``[S(-bound), S(bound)]`` the inverse follows the tangent lines. ``params`` and ``bound`` as in
    :func:`bspline_forward`; differentiable in ``y`` and ``params``.
    """
    y, params = _broadcast(y, params)
    k = params.shape[-1] - 2
    h = 2.0 * bound / k
    v, s = bspline_knots(params, bound)
    v_lo, v_hi = v[..., 0], v[..., -1]
    lo, hi = y < v_lo, y > v_hi
    yc = jnp.where(lo, v_lo, jnp.where(hi, v_hi, y))  # unlike min/max, passes the whole gradient to y at a tie
    j = jnp.sum(lax.stop_gradient(yc)[..., None] >= lax.stop_gradient(v[..., 1:-1]), axis=-1)
    v0, s0, s1 = _gather(v, j), _gather(s, j), _gather(s, j + 1)
    r = yc - v0
    r = jnp.where(r < 0, 0.0, r)  # gradient 1 at r == 0 (a point exactly on a knot), where jnp.maximum gives ½
    a = 0.5 * h * (s1 - s0)
    b = h * s0
    disc = b * b + 4 * a * r
    tiny = jnp.finfo(b.dtype).tiny
    disc = jnp.where(disc < tiny, tiny, disc)  # > 0 anyway; keeps the unused branch finite
    u = _clamp_unit(2 * r / (b + jnp.sqrt(disc)))
    x_in = -bound + h * (j.astype(u.dtype) + u)
    d_in = s0 + (s1 - s0) * u
    s_lo, s_hi = s[..., 0], s[..., -1]
    x = jnp.where(lo, -bound + (y - v_lo) / s_lo, jnp.where(hi, bound + (y - v_hi) / s_hi, x_in))
    d = jnp.where(lo, s_lo, jnp.where(hi, s_hi, d_in))
    return x, jnp.log(d)
