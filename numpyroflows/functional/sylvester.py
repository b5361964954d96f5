"""Sylvester flow ``y = x + Q R tanh(R̃ Qᵀx + b)`` (van den Berg et al. 2018, "Sylvester Normalizing Flows for
Variational Inference"), in JAX.

``Q`` is ``D×M`` with orthonormal columns, ``R`` and ``R̃`` are upper triangular ``M×M`` and ``b ∈ R^M``. By
Sylvester's determinant identity ``det(I_D + Q R diag(h') R̃ Qᵀ) = det(I_M + diag(h') R̃ R)``, and ``R̃ R`` is
upper triangular, so ``log|det ∂y/∂x| = Σ_i log|1 + r_ii r̃_ii tanh'(a_i)|`` with ``a = R̃ Qᵀx + b``. The map is
invertible when ``r_ii r̃_ii > -1`` (the paper's theorem 2 with ``sup tanh' = 1``); :func:`sylvester_diag` gives the
paper's choice ``r_ii = tanh(raw)``, ``r̃_ii = tanh(raw̃)``, so ``|r_ii r̃_ii| < 1``.

Inverse (exact, any ``y``): ``Qᵀy = v + R tanh(R̃ v + b)`` with ``v = Qᵀx`` (the orthogonal complement of the span
of ``Q`` passes unchanged). The system is upper triangular: component ``k`` depends only on ``v_k, …, v_M``, so
solving from last to first (a ``lax.fori_loop``) leaves one scalar increasing equation per component,
``v_k + r_kk tanh(r̃_kk v_k + c_k) = t_k``, solved by bracketed bisection on ``[t_k - |r_kk|, t_k + |r_kk|]`` and one
differentiable Newton step; then ``x = y - Q R tanh(R̃ v + b)``.

Orthonormal ``Q``: :func:`householder_product` (product of Householder reflections, formed without a loop by the
UT transform) or :func:`orthonormal_columns` (sign-fixed reduced QR of a free ``D×M`` matrix).

The functions are pure and jit/vmap-able; formulas, constants and parameter layouts are those of
``pyroflows.functional.sylvester``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

from .root import bisect_increasing, newton_polish

Array = jax.Array


def _tiny(t: Array) -> float:
    return float(jnp.finfo(t.dtype).tiny)


def _diag_embed(diag: Array) -> Array:
    """``(..., M)`` -> ``(..., M, M)`` with ``diag`` on the diagonal (``where``-built: no ``0 · inf`` off it)."""
    m = diag.shape[-1]
    return jnp.where(jnp.eye(m, dtype=bool), diag[..., None], jnp.zeros((), diag.dtype))


def sylvester_diag(raw: Array) -> Array:
    """Diagonal of ``R`` or ``R̃`` from raw values: ``tanh(raw) ∈ (-1, 1)``, so ``r_ii r̃_ii > -1``.

    The diagonal activation of van den Berg et al. 2018, section 4 (the choice of their experiments); it keeps every
    Sylvester layer invertible whatever the raw values.
    """
    return jnp.tanh(raw)


def upper_triangular(diag: Array, upper: Array | None, index: Array | None) -> Array:
    """Upper-triangular ``(..., M, M)`` matrix with diagonal ``diag`` ``(..., M)`` and strictly-upper entries
    ``upper`` ``(..., M(M-1)/2)`` placed at flat positions ``index`` (row-major, e.g. ``i * M + j`` from
    ``jnp.triu_indices(M, 1)``); ``upper=None`` or ``M = 1`` gives a diagonal matrix. The batch shapes of ``diag``
    and ``upper`` broadcast.
    """
    m = diag.shape[-1]
    mat = _diag_embed(diag)
    if upper is None or m < 2:
        return mat
    batch = jnp.broadcast_shapes(diag.shape[:-1], upper.shape[:-1])
    values = jnp.broadcast_to(upper, batch + upper.shape[-1:])
    flat = jnp.zeros(batch + (m * m,), upper.dtype).at[..., jnp.asarray(index)].set(values)
    return mat + flat.reshape(batch + (m, m))


def householder_product(v: Array) -> Array:
    """``Q = H_1 H_2 … H_K`` with ``H_k = I - 2 v_k v_kᵀ / ‖v_k‖²`` for rows ``v_k`` of ``v`` ``(..., K, D)``.

    Without a loop by the UT transform (Joffrain et al. 2006): ``Q = I - Vᵀ S⁻¹ V``, ``S`` upper triangular with
    ``S_ij = v_iᵀ v_j`` (``i < j``) and ``S_ii = ‖v_i‖²/2``; an orthogonal ``D×D`` matrix (one triangular solve
    instead of ``K`` sequential reflections). References: Tomczak & Welling 2016 (Householder flows); van den Berg
    et al. 2018 (Householder Sylvester flows).
    """
    d = v.shape[-1]
    gram = v @ jnp.swapaxes(v, -1, -2)
    half_diag = jnp.maximum(0.5 * jnp.diagonal(gram, axis1=-2, axis2=-1), _tiny(v))
    s = jnp.triu(gram, 1) + _diag_embed(half_diag)
    w = solve_triangular(s, v, lower=False)
    return jnp.eye(d, dtype=v.dtype) - jnp.swapaxes(v, -1, -2) @ w


def orthonormal_columns(a: Array) -> Array:
    """``D×M`` matrix with orthonormal columns spanning those of ``a`` ``(..., D, M)``, ``M ≤ D``.

    The reduced QR factor with column signs fixed so that ``R`` has a non-negative diagonal (the unique, smooth
    Gram-Schmidt orthonormalisation of the columns of ``a``; full column rank assumed). Fixing the signs makes the
    result a smooth function of ``a``, so it can be trained through ``jax.grad``.
    """
    q, r = jnp.linalg.qr(a, mode="reduced")
    d = jnp.diagonal(r, axis1=-2, axis2=-1)
    sign = jnp.where(d < 0, -jnp.ones_like(d), jnp.ones_like(d))
    return q * sign[..., None, :]


def _log_det_terms(h: Array, p: Array) -> Array:
    """``log(1 + p_i tanh'(a_i))`` with ``h = tanh(a)`` and ``p = diag(R) diag(R̃)``."""
    return jnp.log(jnp.maximum(1.0 + p * (1.0 - h * h), _tiny(h)))


def _vecmat(v: Array, m: Array) -> Array:
    """``v @ m`` for ``v`` ``(..., A)`` and ``m`` ``(..., A, B)`` with broadcast batch shapes."""
    return (v[..., None, :] @ m)[..., 0, :]


def _diag_product(r: Array, r_tilde: Array) -> Array:
    return jnp.diagonal(r, axis1=-2, axis2=-1) * jnp.diagonal(r_tilde, axis1=-2, axis2=-1)


def sylvester_forward(x: Array, q: Array, r: Array, r_tilde: Array, b: Array) -> tuple[Array, Array]:
    """Sylvester map ``y = x + Q R tanh(R̃ Qᵀx + b)`` and ``log|det ∂y/∂x| = Σ_i log|1 + r_ii r̃_ii tanh'(a_i)|``.

    van den Berg et al. 2018, eq. (12)-(13) and theorem 2; the log-determinant costs ``O(M)`` by Sylvester's
    determinant identity (module docstring).

    Args:
        x: inputs ``(..., D)``.
        q: ``(..., D, M)`` with orthonormal columns.
        r, r_tilde: upper-triangular ``(..., M, M)`` with ``r_ii r̃_ii > -1``.
        b: ``(..., M)``.

    Returns:
        ``(y, log_det)``, shapes ``(..., D)`` and ``(...)`` (the broadcast batch shape).
    """
    z = _vecmat(x, q)
    a = _vecmat(z, jnp.swapaxes(r_tilde, -1, -2)) + b
    h = jnp.tanh(a)
    y = x + _vecmat(_vecmat(h, jnp.swapaxes(r, -1, -2)), jnp.swapaxes(q, -1, -2))
    return y, _log_det_terms(h, _diag_product(r, r_tilde)).sum(-1)


def sylvester_inverse(y: Array, q: Array, r: Array, r_tilde: Array, b: Array) -> tuple[Array, Array]:
    """Exact inverse of :func:`sylvester_forward` for any ``y``, and ``log|det ∂x/∂y|``.

    Solves the upper-triangular system ``v + R tanh(R̃ v + b) = Qᵀy`` from the last component to the first in a
    ``lax.fori_loop``, each a scalar increasing equation (bisection plus one differentiable Newton step, so
    derivatives follow the implicit function theorem), then ``x = y - Q R tanh(R̃ v + b)``. The map is that of
    van den Berg et al. 2018; the back-substitution follows the proof of their theorem 2.

    Args:
        y: outputs ``(..., D)``.
        q, r, r_tilde, b: as in :func:`sylvester_forward`.

    Returns:
        ``(x, log_det)`` with ``log_det`` minus the forward log-determinant at ``x``.
    """
    m = r.shape[-1]
    z = _vecmat(y, q)
    batch = jnp.broadcast_shapes(z.shape[:-1], b.shape[:-1], r.shape[:-2], r_tilde.shape[:-2])
    dtype = jnp.result_type(z, b, r, r_tilde)
    z = jnp.broadcast_to(z, batch + (m,)).astype(dtype)
    r_diag = jnp.diagonal(r, axis1=-2, axis2=-1)
    rt_diag = jnp.diagonal(r_tilde, axis1=-2, axis2=-1)
    cols = jnp.arange(m)

    def solve_component(i, carry):
        vs, hs = carry
        k = m - 1 - i
        after = cols > k
        # c_k = b_k + Σ_{j>k} r̃_kj v_j and t_k = (Qᵀy)_k - Σ_{j>k} r_kj h_j (components j > k are already solved)
        c = b[..., k] + jnp.where(after, r_tilde[..., k, :] * vs, 0.0).sum(-1)
        t = z[..., k] - jnp.where(after, r[..., k, :] * hs, 0.0).sum(-1)
        rkk, rtkk = r_diag[..., k], rt_diag[..., k]
        c_d, rkk_d, rtkk_d = lax.stop_gradient(c), lax.stop_gradient(rkk), lax.stop_gradient(rtkk)

        def fn(v: Array) -> Array:
            return v + rkk_d * jnp.tanh(rtkk_d * v + c_d)

        def fn_and_deriv(v: Array) -> tuple[Array, Array]:
            h = jnp.tanh(rtkk * v + c)
            deriv = jnp.maximum(1.0 + rkk * rtkk * (1.0 - h * h), _tiny(h))
            return v + rkk * h, deriv

        half = jnp.abs(rkk_d)
        v0 = bisect_increasing(fn, t, t - half, t + half)
        v = newton_polish(fn_and_deriv, v0, t)
        return vs.at[..., k].set(v), hs.at[..., k].set(jnp.tanh(rtkk * v + c))

    zeros = jnp.zeros(batch + (m,), dtype)
    _, h = lax.fori_loop(0, m, solve_component, (zeros, zeros))
    x = y - _vecmat(_vecmat(h, jnp.swapaxes(r, -1, -2)), jnp.swapaxes(q, -1, -2))
    return x, -_log_det_terms(h, _diag_product(r, r_tilde)).sum(-1)
