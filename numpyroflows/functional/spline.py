"""Monotone rational-quadratic splines with linear tails (Durkan et al. 2019, "Neural Spline Flows"), in JAX.

On ``[-bound, bound]`` the map is a piecewise rational-quadratic function through ``K + 1`` knots with positive
derivatives at the knots; outside it is the identity (derivative 1 at both ends, so the map is C¹). Raw parameters are
unconstrained: ``K`` bin widths, ``K`` bin heights and ``K - 1`` interior derivatives, last axis laid out as
``[widths | heights | derivatives]``:

    widths  w_j = 2·bound·(m + (1 - m·K)·softmax(raw_w)_j),   knots x_j = -bound + Σ_{i<j} w_i   (same for heights)
    derivs  d_j = m_d + softplus(raw_d_j + c)  (j = 1..K-1),  d_0 = d_K = 1

with ``c`` chosen so that all-zero raw parameters give the identity. In bin ``k`` with ``ξ = (x - x_k)/w_k`` and
``s = h_k / w_k``:

    y = y_k + h_k (s ξ² + d_k ξ(1-ξ)) / (s + (d_{k+1} + d_k - 2s) ξ(1-ξ))

and the inverse is the root of a quadratic in ``ξ``, taken on either sign of its linear coefficient in the form that
does not cancel (:func:`_stable_root`).

Speed: the selected bin's knots are computed on a bins-first ``(3K - 1, N)`` layout over the flattened values
(``param_axis=0`` accepts it directly, as autoregressive layers produce it), and :func:`_bin_params` carries a tangent
rule that touches only the two selected knots. The rational-quadratic itself is left to JAX's autodiff, so every order
of derivative is available. Parameters shared across the values (an elementwise layer) skip that layout: their knots are
computed once and each value's bin gathered (:func:`_shared_bin_params`).

Numerics: inputs are clamped into the bound before any division, square root or logarithm (with ``where``, so that the
gradient at exactly ``±bound`` passes to the input unchanged, where ``jnp.clip`` would halve it), the identity tails are
added back as ``(x - x_c)`` after the in-bound part (exactly zero inside), and the root is clamped to ``[0, 1]`` in
value only; every branch of every ``where`` is finite, so values and gradients stay finite for inputs far outside the
bound.

The functions are pure and work under ``jax.jit`` and ``jax.vmap``. Formulas, constants and the raw-parameter layout
are those of ``pyroflows.functional.spline``, so raw parameters move between the packages unchanged.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

#: floor on each bin's width and height, as a fraction of the interval (widths and heights are computed together)
MIN_BIN_WIDTH = 1e-3
MIN_DERIVATIVE = 1e-3
# softplus(0 + _DERIV_SHIFT) + MIN_DERIVATIVE == 1: raw zeros are the identity.
_DERIV_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))
_SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus returns its input above this


def num_params(count_bins: int) -> int:
    """Number of raw parameters per element for ``count_bins`` bins: ``3K - 1`` (``K`` widths, ``K`` heights and
    ``K - 1`` interior derivatives)."""
    return 3 * count_bins - 1


def _softplus(u: Array) -> Array:
    """``log(1 + e^u)``, and ``u`` itself above 20, exactly as ``torch.nn.functional.softplus`` (where-safe)."""
    big = u > _SOFTPLUS_THRESHOLD
    return jnp.where(big, u, jnp.log1p(jnp.exp(jnp.where(big, 0.0, u))))


def spline_knots(params: Array, bound: float) -> tuple[Array, Array, Array]:
    """Knot abscissae, ordinates and derivatives, each ``(..., K + 1)``, from raw parameters ``(..., 3K - 1)``.

    Sizes are a softmax with a floor, ``2·bound·(m + (1 - m·K)·e_j/Σe)``, so knot ``j`` is ``c_j + r·Σ_{i<j} e_i``
    with ``c_j = -bound + 2·bound·m·j`` and ``r = 2·bound·(1 - m·K)/Σe``; the end knots are exactly ``±bound`` and
    the end derivatives exactly 1 (see the module docstring for the parameterisation).

    Args:
        params: raw parameters ``(..., 3K - 1)`` laid out ``[widths | heights | derivatives]``.
        bound: half-width of the spline's interval ``[-bound, bound]``.

    Returns:
        ``(x_knots, y_knots, derivatives)``, each ``(..., K + 1)``; differentiable in ``params`` to any order.
    """
    params = jnp.asarray(params)
    k = (params.shape[-1] + 1) // 3
    uwh = params[..., : 2 * k].reshape(params.shape[:-1] + (2, k))
    ud = params[..., 2 * k :]
    # softmax is shift-invariant: the max carries no gradient
    e = jnp.exp(uwh - lax.stop_gradient(jnp.max(uwh, axis=-1, keepdims=True)))
    # running sums as one small matmul with a 0/1 matrix (XLA's cumsum is a slow reduce-window on CPU): column j < K
    # of ``tri`` sums e_0 … e_{j-1}; column K is zero, so that the last knot is exactly ``bound`` from ``offsets``
    tri = np.tri(k + 1, k, -1, dtype=np.float64).T
    tri[:, -1] = 0.0
    ce = jnp.matmul(e, jnp.asarray(tri, params.dtype), precision=lax.Precision.HIGHEST)
    scale = (2 * bound * (1.0 - MIN_BIN_WIDTH * k)) / jnp.sum(e, axis=-1, keepdims=True)
    offsets = (jnp.arange(k + 1, dtype=params.dtype) * (2 * bound * MIN_BIN_WIDTH) - bound).at[-1].set(bound)
    knots = offsets + ce * scale
    d = jnp.pad(MIN_DERIVATIVE + _softplus(ud + _DERIV_SHIFT), [(0, 0)] * (ud.ndim - 1) + [(1, 1)], constant_values=1.0)
    return knots[..., 0, :], knots[..., 1, :], d


def _clamp(v: Array, bound: float) -> Array:
    """``clamp(v, -bound, bound)`` whose gradient is 1 on the closed interval (as torch's; ``jnp.clip`` halves it at
    the ends)."""
    return jnp.where(v > bound, bound, jnp.where(v < -bound, -bound, v))


def _unrolled_sum(t: Array, axis: int) -> Array:
    """Sum over the (short, static) bins axis as a chain of adds of whole rows (see :func:`_bin_params` for when)."""
    # one split, not a slice per row (in reverse mode a split becomes one concatenation, slices zero-padded copies)
    return functools.reduce(jnp.add, [jnp.squeeze(u, axis) for u in jnp.split(t, t.shape[axis], axis)])


def _reduce_sum(t: Array, axis: int) -> Array:
    return jnp.sum(t, axis=axis)


def _bin_quantities(params_t: Array, value: Array, bound: float, axis: int, rowsum=_reduce_sum):
    """Forward of :func:`_bin_params`, and what its tangent rule reuses (bins-first: see there); ``rowsum(t, axis)``
    sums over a bins axis."""
    k = (params_t.shape[0] + 1) // 3
    dtype = params_t.dtype
    step = 2 * bound * MIN_BIN_WIDTH
    lead = params_t.shape[1:]
    col = (1,) * len(lead)  # broadcasts a (K,) vector down the bins axis
    uwh = params_t[: 2 * k].reshape((2, k) + lead)
    # softmax is shift-invariant: the max carries no gradient
    e = jnp.exp(uwh - lax.stop_gradient(jnp.max(uwh, axis=1, keepdims=True)))  # (2, K, *S)
    total = rowsum(e, 1)  # (2, *S)
    r = (2 * bound * (1.0 - MIN_BIN_WIDTH * k)) / total
    # interior knots j = 1..K-1 of the searched row, c_j + r·Σ_{i<j} e_i, the running sums as one small matmul with a
    # 0/1 matrix (XLA's cumsum is a slow reduce-window on CPU)
    tri = jnp.asarray(np.tri(k - 1, k, 0), dtype)
    ce = jnp.tensordot(tri, e[axis], axes=1, precision=lax.Precision.HIGHEST)
    inner = (jnp.arange(1, k, dtype=dtype) * step - bound).reshape((k - 1,) + col) + ce * r[axis]
    idx = jnp.sum(value >= inner, axis=0)  # bin 0..K-1
    # select by 0/1 masks over the bins axis: elementwise work that XLA fuses (a gather's gradient is a scatter-add)
    bins = jnp.arange(k).reshape((k,) + col)
    below = (bins < idx).astype(dtype)
    at = (bins == idx).astype(dtype)
    c_left = idx.astype(dtype) * step - bound
    has_right = idx < k - 1  # is the right knot interior? (the last one is exactly ``bound``)
    e_below = rowsum(e * below, 1)  # (2, *S): rows x and y
    left = c_left + r * e_below
    right = jnp.where(has_right, c_left + step + r * (e_below + rowsum(e * at, 1)), bound)
    raw_d = params_t[2 * k:] + _DERIV_SHIFT  # interior derivatives 1..K-1
    d = MIN_DERIVATIVE + _softplus(raw_d)
    d0 = jnp.where(idx > 0, rowsum(d * at[1:], 0), 1.0)
    d1 = jnp.where(has_right, rowsum(d * at[:-1], 0), 1.0)
    shape = jnp.broadcast_shapes(value.shape, lead)
    out = tuple(jnp.broadcast_to(t, shape) for t in
                (left[0], right[0] - left[0], left[1], right[1] - left[1], d0, d1))
    return out, (e, total, r, below, at, c_left, has_right, left, right, raw_d, shape)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _bin_params(params_t: Array, value: Array, bound: float, axis: int):
    """``(x_k, w_k, y_k, h_k, d_k, d_{k+1})`` of the bin holding each ``value`` (in the bound), searched along x
    (``axis`` 0) or y (1) by counting the interior knots ``<= value``.

    Bins-first: ``params_t`` is ``(3K - 1, *S)`` for values of shape ``S``, so that every op runs over the long
    trailing axes and the sums over bins are adds of whole rows (the parameter axis last, as conditioners lay it out
    per dimension, is slower on CPU). The selected bin does not depend on ``value`` almost everywhere,
    so ``value`` carries no derivative.

    Derivatives by a tangent rule that uses only the two selected knots: with ``r = 2·bound·(1 - m·K)/Σe``, knot
    ``j`` is ``c_j + r·Σ_{i<j} e_i``, so ``d knot_j = r·Σ_{i<j} e_i du_i - (knot_j - c_j)·Σ_i e_i du_i / Σe`` and
    ``d d_j = sigmoid(raw_j + c)·d raw_j``. JAX transposes it for reverse mode; higher orders differentiate the rule
    itself.

    Evaluated alone (sampling, scoring) the sums over bins are chains of row adds (:func:`_unrolled_sum`); under
    differentiation the rule recomputes the values with plain reductions, which XLA fuses with the rest of a training
    step (each form is the slower one in the other setting). The two agree to rounding.
    """
    return _bin_quantities(params_t, value, bound, axis, _unrolled_sum)[0]


@_bin_params.defjvp
def _bin_params_jvp(bound: float, axis: int, primals, tangents):
    params_t, value = primals
    dp, _ = tangents
    out, (e, total, r, below, at, c_left, has_right, left, right, raw_d, shape) = _bin_quantities(
        params_t, value, bound, axis)
    k = e.shape[1]
    step = 2 * bound * MIN_BIN_WIDTH
    ed = e * dp[: 2 * k].reshape(e.shape)
    mean = jnp.sum(ed, axis=1) / total
    part_below = jnp.sum(ed * below, axis=1)
    d_left = r * part_below - (left - c_left) * mean
    d_right = jnp.where(has_right, r * (part_below + jnp.sum(ed * at, axis=1)) - (right - c_left - step) * mean, 0.0)
    dd = jax.nn.sigmoid(raw_d) * dp[2 * k:]
    tangent = (d_left[0], d_right[0] - d_left[0], d_left[1], d_right[1] - d_left[1],
               jnp.sum(dd * at[1:], axis=0), jnp.sum(dd * at[:-1], axis=0))
    return out, tuple(jnp.broadcast_to(t, shape) for t in tangent)


def _shared_bin_params(params: Array, value: Array, bound: float, axis: int):
    """:func:`_bin_params` for parameters ``(*P, 3K - 1)`` shared across values of a larger broadcast shape ``S``
    (an elementwise spline layer: one spline per dimension for the whole batch): the knots are computed once on
    ``P`` and each value's two knots gathered, rather than the parameters broadcast to every value (faster, forward
    and backward, at every batch size); the outputs are flattened, as :func:`_flat`'s."""
    xk, yk, d = spline_knots(params, bound)
    shape = jnp.broadcast_shapes(value.shape, xk.shape[:-1])
    knots = (xk, yk)[axis]
    idx = jnp.broadcast_to(jnp.sum(value[..., None] >= knots[..., 1:-1], axis=-1), shape)  # bin 0..K-1
    table = jnp.broadcast_to(jnp.stack([xk, yk, d], axis=-2), shape + (3, xk.shape[-1]))
    sel = jnp.take_along_axis(table, jnp.stack([idx, idx + 1], axis=-1)[..., None, :], axis=-1)  # (*S, 3, 2)
    (x0, x1), (y0, y1), (d0, d1) = (tuple(sel[..., i, j].reshape(-1) for j in range(2)) for i in range(3))
    return x0, x1 - x0, y0, y1 - y0, d0, d1


def _flat(value: Array, params: Array, param_axis: int) -> tuple[Array, Array, tuple[int, ...], bool]:
    """Values ``(N,)`` over the broadcast shape ``S`` of values and parameters (``N`` its size), the parameters as
    :func:`_bin_params` or :func:`_shared_bin_params` takes them, ``S``, and which of the two (``True``: shared).

    Per-value parameters (conditioned layers) go bins-first, ``(3K - 1, N)``: one long contiguous axis, whatever the
    batch shape (a short last axis, such as the ``1`` of one dimension at a time, leaves XLA's CPU code
    unvectorised). Parameters with fewer elements than ``S`` are shared across values and stay ``(*P, 3K - 1)``."""
    params = jnp.asarray(params)
    per_value = jnp.moveaxis(params, param_axis, 0) if param_axis != 0 else params
    shape = jnp.broadcast_shapes(value.shape, per_value.shape[1:])
    flat_value = jnp.broadcast_to(value, shape).reshape(-1)
    if math.prod(per_value.shape[1:]) < math.prod(shape):
        return flat_value, jnp.moveaxis(per_value, 0, -1), shape, True
    per_value = per_value.reshape(per_value.shape[:1] + (1,) * (len(shape) + 1 - per_value.ndim)
                                  + per_value.shape[1:])
    per_value = jnp.broadcast_to(per_value, per_value.shape[:1] + shape).reshape(per_value.shape[0], -1)
    return flat_value, per_value, shape, False


def _select(params: Array, value: Array, bound: float, axis: int, shape: tuple[int, ...], shared: bool):
    """The selected bin's quantities for flat (clamped) ``value`` ``(N,)``, each ``(N,)``."""
    if shared:
        return _shared_bin_params(params, value.reshape(shape), bound, axis)
    return _bin_params(params, value, bound, axis)


def _log_deriv(xi: Array, s: Array, d0: Array, d1: Array, den: Array) -> Array:
    """``log dy/dx = log(d_{k+1} ξ² + 2 s ξ(1-ξ) + d_k (1-ξ)²) + 2 log(s / den)``."""
    omx = 1 - xi
    num = d1 * xi * xi + 2 * s * xi * omx + d0 * omx * omx
    return jnp.log(num) + 2 * jnp.log(s / den)


def _stable_root(a: Array, b: Array, c: Array, root: Array) -> Array:
    """The spline's root ``ξ = 2c / (b + √disc) = (√disc - b) / (2a)`` of ``a ξ² + b ξ - c = 0`` (``√disc`` given),
    taking whichever form has no cancellation: the first for ``b ≥ 0``, the second for ``b < 0`` (where ``a`` is
    then bounded away from zero, since the root lies in ``[0, 1]``)."""
    pos = b >= 0
    num = jnp.where(pos, 2 * c, root - b)
    den = jnp.where(pos, root + b, 2 * a)
    return num / jnp.where(den == 0, jnp.ones_like(den), den)


def _clamp_unit(xi: Array) -> Array:
    """``clamp(ξ, 0, 1)`` in value only: rounding can put the root a hair outside, and a hard clamp would zero its
    gradient exactly at the knots and the bound."""
    return xi + lax.stop_gradient(jnp.clip(xi, 0, 1) - xi)


def rqs_forward(x: Array, params: Array, bound: float, param_axis: int = -1) -> tuple[Array, Array]:
    """``y = spline(x)`` and ``log |dy/dx|`` elementwise; ``params`` broadcasts to ``x.shape + (3K - 1,)``.

    The rational-quadratic spline of Durkan et al. (2019), "Neural Spline Flows": identity outside
    ``[-bound, bound]``, ``K`` rational-quadratic bins inside (module docstring for the formulas).

    Args:
        x: inputs, any shape.
        params: raw parameters ``[widths | heights | derivatives]`` (``3K - 1`` of them) on axis ``param_axis``; the
            other axes broadcast against ``x`` (one spline per dimension shared by a batch, or one per value).
        bound: half-width of the spline's interval.
        param_axis: the parameter axis of ``params``. ``param_axis=0`` takes them bins-first,
            ``(3K - 1,) + x.shape``: the fast layout, no transpose (autoregressive layers produce it).

    Returns:
        ``(y, log |dy/dx|)``, both of the broadcast batch shape. Pure, jit- and vmap-able; derivatives of any order
        in ``x``, and in ``params`` through a custom JVP rule that is itself differentiable.
    """
    x, params, shape, shared = _flat(jnp.asarray(x), params, param_axis)
    xc = _clamp(x, bound)
    x0, w, y0, h, d0, d1 = _select(params, xc, bound, 0, shape, shared)
    s = h / w
    xi = _clamp_unit((xc - x0) / w)
    t = xi * (1 - xi)
    den = s + (d1 + d0 - 2 * s) * t
    y = y0 + h * (s * xi * xi + d0 * t) / den + (x - xc)  # identity tails: y_in is ±bound at the ends
    ladj = _log_deriv(xi, s, d0, d1, den) * (x == xc).astype(y.dtype)
    return y.reshape(shape), ladj.reshape(shape)


def rqs_inverse(y: Array, params: Array, bound: float, param_axis: int = -1) -> tuple[Array, Array]:
    """``x = spline⁻¹(y)`` (closed-form quadratic root) and ``log |dy/dx|`` at ``x`` (the *forward* log-derivative).

    The inverse of :func:`rqs_forward` (Durkan et al. 2019), with the same arguments: in the bin holding ``y`` the
    relative position ``ξ`` is the root in ``[0, 1]`` of a quadratic, taken in the form without cancellation; outside
    ``[-bound, bound]`` it is the identity. Returns ``(x, log |dy/dx|)``, both of the broadcast batch shape, so that
    ``log p_Y(y) = log p_X(x) - log |dy/dx|``. Pure, jit- and vmap-able, and differentiable in ``y`` and ``params``.
    """
    y, params, shape, shared = _flat(jnp.asarray(y), params, param_axis)
    yc = _clamp(y, bound)
    x0, w, y0, h, d0, d1 = _select(params, yc, bound, 1, shape, shared)
    s = h / w
    dy = yc - y0
    q = d1 + d0 - 2 * s
    a = h * (s - d0) + dy * q
    b = h * d0 - dy * q
    c = -s * dy
    # sqrt of a floor above zero keeps the gradient finite; the value-only clamp keeps dξ/dy at ξ = 1 (the bound)
    root = jnp.sqrt(jnp.maximum(b * b - 4 * a * c, jnp.finfo(b.dtype).tiny))
    xi = _clamp_unit(_stable_root(a, b, -c, root))
    x = x0 + xi * w + (y - yc)
    den = s + q * xi * (1 - xi)
    ladj = _log_deriv(xi, s, d0, d1, den) * (y == yc).astype(x.dtype)
    return x.reshape(shape), ladj.reshape(shape)
