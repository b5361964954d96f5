"""Linear bijections (LU, Householder) and fixed elementwise nonlinearities (leaky ReLU, sigmoid, tanh), in JAX.

Pure functions: no parameters, no state. Every ``*_forward`` returns ``(y, log|det ∂y/∂x|)`` and every
``*_inverse`` returns ``(x, log|det ∂x/∂y|)``; log-determinants are summed over the last axis (shape ``batch``).
Matrices and vectors may carry their own batch shape (parameters produced from a context); it broadcasts against the
input's. All functions are jit- and vmap-compatible. Formulas, constants, argument names and return conventions are
those of ``pyroflows.functional.linear``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from .affine import affine_scale

Array = jax.Array

_SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus returns x itself above this


def _softplus(x: Array) -> Array:
    """``log(1 + e^x)``, and ``x`` itself above 20 (as ``torch.nn.functional.softplus``, so values match pyroflows
    to rounding), written with ``where`` so that neither branch overflows."""
    return jnp.where(x > _SOFTPLUS_THRESHOLD, x, jnp.log1p(jnp.exp(jnp.where(x > _SOFTPLUS_THRESHOLD, 0.0, x))))


def _clamp(x: Array, lo: float, hi: float) -> Array:
    """``clamp(x, lo, hi)`` whose gradient is 1 on the closed interval ``[lo, hi]`` (ties included) and 0 outside
    (``jnp.clip`` would halve it at the ends)."""
    return jnp.where(x < lo, lo, jnp.where(x > hi, hi, x)).astype(x.dtype)


def _diag_embed(d: Array) -> Array:
    return d[..., :, None] * jnp.eye(d.shape[-1], dtype=d.dtype)


# --------------------------------------------------------------------------------------------------- LU


def lu_factors(packed: Array, raw_diag: Array) -> tuple[Array, Array, Array]:
    """Unit lower triangular ``L`` and upper triangular ``U`` with positive diagonal from unconstrained parameters.

    ``L = I + tril(packed, -1)``, ``U = triu(packed, 1) + diag(d)`` with ``d = 1e-3 + softplus(raw_diag + c)`` (``c``
    such that ``raw_diag = 0`` gives ``d = 1``, see :func:`numpyroflows.functional.affine.affine_scale`): every
    choice of the raw parameters gives an invertible ``L U``, and all-zero raw parameters give the identity.

    Args:
        packed: ``(..., D, D)``; its strict lower part fills ``L``, its strict upper part fills ``U``.
        raw_diag: ``(..., D)``.

    Returns:
        ``(L, U, log d)``.
    """
    diag = affine_scale(raw_diag)
    lower = jnp.tril(packed, -1) + _diag_embed(jnp.ones_like(diag))
    upper = jnp.triu(packed, 1) + _diag_embed(diag)
    return lower, upper, jnp.log(diag)


def lu_forward(
    x: Array, lower: Array, upper: Array, log_diag: Array, perm: Array, shift: Array
) -> tuple[Array, Array]:
    """``y = P L U x + b`` with ``(P z)_i = z_{perm_i}``; ``log|det| = Σ log diag(U)``.

    The LU-decomposed linear layer of Glow (Kingma & Dhariwal, 2018, "Glow: Generative Flow with Invertible 1x1
    Convolutions"), on vectors. The log-determinant costs ``O(D)`` (no determinant of a dense matrix is formed).

    Args:
        x: ``(..., D)``.
        lower, upper: ``(D, D)`` or ``(B..., D, D)`` from :func:`lu_factors`; ``log_diag``: ``(D,)`` or ``(B..., D)``.
        perm: ``(D,)`` integer array; shift: ``(D,)`` or ``(B..., D)``.

    Returns:
        ``(y, log|det|)``, shapes ``(..., D)`` and ``(...)`` (the broadcast batch shape).
    """
    weight = (lower @ upper)[..., perm, :]
    if weight.ndim == 2:
        z = x @ weight.T
    else:
        z = (x[..., None, :] @ jnp.swapaxes(weight, -1, -2))[..., 0, :]
    y = z + shift
    return y, jnp.broadcast_to(log_diag.sum(-1), y.shape[:-1])


def lu_inverse(
    y: Array, lower: Array, upper: Array, log_diag: Array, inv_perm: Array, shift: Array
) -> tuple[Array, Array]:
    """``x = U⁻¹ L⁻¹ Pᵀ (y - b)`` by two triangular solves; ``log|det| = -Σ log diag(U)``.

    Args as in :func:`lu_forward`, with ``inv_perm = argsort(perm)``. Batched matrices (from a context) broadcast
    against the batch shape of ``y``; unbatched ones are solved once for the whole batch. Returns
    ``(x, log|det ∂x/∂y|)``, shapes ``(..., D)`` and ``(...)``.
    """
    z = (y - shift)[..., inv_perm]
    if lower.ndim == 2 and upper.ndim == 2:
        # One solve for the whole batch: the columns of zᵀ solve  L U xᵀ = zᵀ.
        flat = z.reshape(-1, z.shape[-1]).T
        w = solve_triangular(lower, flat, lower=True, unit_diagonal=True)
        x = solve_triangular(upper, w, lower=False).T.reshape(z.shape)
    else:
        w = solve_triangular(lower, z[..., None], lower=True, unit_diagonal=True)
        x = solve_triangular(upper, w, lower=False)[..., 0]
    return x, jnp.broadcast_to(-log_diag.sum(-1), x.shape[:-1])


# --------------------------------------------------------------------------------------------------- Householder


def cholesky_affine_forward(x: Array, loc: Array, scale_tril: Array) -> tuple[Array, Array]:
    """``y = loc + L x`` for a lower-triangular ``L`` with positive diagonal; ``log|det| = Σ log diag(L)``.

    The map from ``N(0, I)`` to ``N(loc, L Lᵀ)`` (``L`` a Cholesky factor of the covariance).

    Args:
        x: ``(..., D)``; loc: ``(D,)``; scale_tril: ``(D, D)``, lower triangular (the upper part is ignored).

    Returns:
        ``(y, log|det|)``, shapes ``(..., D)`` and ``(...)``.
    """
    y = loc + x @ jnp.tril(scale_tril).T
    return y, jnp.broadcast_to(jnp.log(jnp.diagonal(scale_tril)).sum(-1), y.shape[:-1])


def cholesky_affine_inverse(y: Array, loc: Array, scale_tril: Array) -> tuple[Array, Array]:
    """``x = L⁻¹ (y - loc)`` by one triangular solve; ``log|det| = -Σ log diag(L)``."""
    rows = jnp.reshape(y - loc, (-1, y.shape[-1])).T
    x = solve_triangular(jnp.tril(scale_tril), rows, lower=True).T.reshape(y.shape)
    return x, jnp.broadcast_to(-jnp.log(jnp.diagonal(scale_tril)).sum(-1), y.shape[:-1])


def _reflect(x: Array, v: Array) -> Array:
    # where (not maximum): a zero vector then gets a zero gradient instead of 0·inf
    norm2 = (v * v).sum(-1, keepdims=True)
    norm2 = jnp.where(norm2 < jnp.finfo(v.dtype).tiny, jnp.finfo(v.dtype).tiny, norm2)
    return x - (2.0 * (x * v).sum(-1, keepdims=True) / norm2) * v


def householder_forward(x: Array, vectors: Array) -> tuple[Array, Array]:
    """``y = H_K ⋯ H_1 x`` with ``H_k = I - 2 v_k v_kᵀ / ‖v_k‖²``; orthogonal, so ``log|det| = 0``.

    Tomczak & Welling (2016), "Improving Variational Auto-Encoders using Householder Flow". The reflections are
    applied one by one (``O(K·D)`` per vector, no ``D × D`` matrix is formed); a zero vector leaves ``x`` unchanged
    and gets a zero gradient.

    Args:
        x: ``(..., D)``.
        vectors: ``(K, D)`` or ``(B..., K, D)``; ``v_1`` is applied first.

    Returns:
        ``(y, zeros)``, shapes ``(..., D)`` and ``(...)``.
    """
    for k in range(vectors.shape[-2]):
        x = _reflect(x, vectors[..., k, :])
    return x, jnp.zeros(x.shape[:-1], x.dtype)


def householder_inverse(y: Array, vectors: Array) -> tuple[Array, Array]:
    """``x = H_1 ⋯ H_K y`` (each reflection is its own inverse; reverse order); ``log|det| = 0``.

    Arguments and shapes as in :func:`householder_forward`.
    """
    for k in reversed(range(vectors.shape[-2])):
        y = _reflect(y, vectors[..., k, :])
    return y, jnp.zeros(y.shape[:-1], y.dtype)


# --------------------------------------------------------------------------------------------------- leaky ReLU


def leaky_relu_forward(x: Array, slope: Array) -> tuple[Array, Array]:
    """``y = x`` for ``x ≥ 0``, ``slope · x`` otherwise; ``log|det| = Σ_{x_i < 0} log slope_i``.

    An invertible elementwise nonlinearity (Papamakarios et al., 2021, "Normalizing Flows for Probabilistic
    Modeling and Inference", section 3.1).

    Args:
        x: ``(..., D)``; slope: positive, ``(D,)`` or ``(B..., D)``.

    Returns:
        ``(y, log|det|)``, shapes ``(..., D)`` and ``(...)`` (the broadcast batch shape).
    """
    neg = x < 0
    y = jnp.where(neg, slope * x, x)
    ld = jnp.where(neg, jnp.log(slope), jnp.zeros_like(slope)).sum(-1)
    return y, jnp.broadcast_to(ld, y.shape[:-1])


def leaky_relu_inverse(y: Array, slope: Array) -> tuple[Array, Array]:
    """``x = y`` for ``y ≥ 0``, ``y / slope`` otherwise; ``log|det| = -Σ_{y_i < 0} log slope_i``.

    The inverse of :func:`leaky_relu_forward` (a positive slope keeps the sign, so ``y < 0`` exactly where
    ``x < 0``); arguments and shapes as there.
    """
    neg = y < 0
    x = jnp.where(neg, y / slope, y)
    ld = -jnp.where(neg, jnp.log(slope), jnp.zeros_like(slope)).sum(-1)
    return x, jnp.broadcast_to(ld, x.shape[:-1])


# --------------------------------------------------------------------------------------------------- sigmoid / tanh


def _open_unit_bounds(dtype) -> tuple[float, float]:
    info = jnp.finfo(dtype)
    return float(info.tiny), 1.0 - float(info.eps) / 2  # smallest positive normal, largest number below 1


def sigmoid_forward(x: Array) -> tuple[Array, Array]:
    """``y = σ(x) = 1 / (1 + e^{-x})``; ``log σ'(x) = -softplus(-x) - softplus(x)``.

    The output is clamped into the open interval ``(0, 1)`` (representable numbers), so that far inputs give an
    output whose inverse is finite; the log-det uses the stable formula and stays finite for any ``x``. ``x`` is
    ``(..., D)``; returns ``y`` of the same shape and the log-det summed over the last axis, ``(...)``.
    """
    lo, hi = _open_unit_bounds(x.dtype)
    y = _clamp(jax.nn.sigmoid(x), lo, hi)
    return y, (-_softplus(-x) - _softplus(x)).sum(-1)


def sigmoid_inverse(y: Array) -> tuple[Array, Array]:
    """``x = logit(y) = log y - log(1 - y)``; ``log|det ∂x/∂y| = -Σ (log y + log(1 - y))``.

    ``y`` is clamped into ``(0, 1)`` first (validate it before calling to reject values outside), so the result is
    finite for any input. ``y`` is ``(..., D)``; the log-det is summed over the last axis.
    """
    lo, hi = _open_unit_bounds(y.dtype)
    y = _clamp(y, lo, hi)
    log_y, log_1my = jnp.log(y), jnp.log1p(-y)
    return log_y - log_1my, -(log_y + log_1my).sum(-1)


def tanh_forward(x: Array) -> tuple[Array, Array]:
    """``y = tanh(x)``; ``log tanh'(x) = 2 (log 2 - x - softplus(-2x))`` (stable for any ``x``).

    The output is clamped into the open interval ``(-1, 1)`` so that far inputs have a finite inverse. ``x`` is
    ``(..., D)``; returns ``y`` of the same shape and the log-det summed over the last axis, ``(...)``.
    """
    _, hi = _open_unit_bounds(x.dtype)
    y = _clamp(jnp.tanh(x), -hi, hi)
    ld = 2.0 * (jnp.log(jnp.asarray(2.0, x.dtype)) - x - _softplus(-2.0 * x))
    return y, ld.sum(-1)


def tanh_inverse(y: Array) -> tuple[Array, Array]:
    """``x = atanh(y) = (log(1 + y) - log(1 - y)) / 2``; ``log|det ∂x/∂y| = -Σ (log(1 + y) + log(1 - y))``.

    ``y`` is clamped into ``(-1, 1)`` first (validate it before calling to reject values outside), so the result is
    finite for any input. ``y`` is ``(..., D)``; the log-det is summed over the last axis.
    """
    _, hi = _open_unit_bounds(y.dtype)
    y = _clamp(y, -hi, hi)
    lp, lm = jnp.log1p(y), jnp.log1p(-y)
    return 0.5 * (lp - lm), -(lp + lm).sum(-1)
