"""Elementwise affine and additive transformers, in JAX (mirrors :mod:`pyroflows.functional.affine`).

The affine transformer ``y = shift + exp(s)·x`` with the soft-clamped log-scale ``s = r / (1 + |r|/5)`` (or, with
``scale="softplus"``, ``y = shift + affine_scale(r)·x``), the softplus diagonal scale of ``DiagonalAffine`` and its
closed-form inverse, with the same formulas, constants and raw layouts as the torch module (whose docstring gives the
reasons).
Additive (NICE, Dinh et al. 2014): ``y = x + shift``, raw layout ``[shift]``, log-det 0.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

MIN_SCALE = 1e-3
_SCALE_SHIFT = math.log(math.expm1(1.0 - MIN_SCALE))
#: bound B of the affine transformer's log-scale: one layer scales by at most e^5 ≈ 148 either way
LOG_SCALE_BOUND = 5.0
_SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus returns its input above this


def _softplus(u: Array) -> Array:
    """``log(1 + e^u)``, and ``u`` itself above 20, exactly as ``torch.nn.functional.softplus`` (where-safe)."""
    big = u > _SOFTPLUS_THRESHOLD
    return jnp.where(big, u, jnp.log1p(jnp.exp(jnp.where(big, 0.0, u))))


def affine_scale(raw_scale: Array) -> Array:
    """Positive scale ``MIN_SCALE + softplus(raw + c)`` from its raw parameter (``raw = 0`` gives 1); mirrors
    :func:`pyroflows.functional.affine.affine_scale`."""
    return MIN_SCALE + _softplus(raw_scale + _SCALE_SHIFT)


def affine_scale_inverse(scale: Array) -> Array:
    """The raw parameter giving ``scale``: the inverse of :func:`affine_scale`; mirrors
    :func:`pyroflows.functional.affine.affine_scale_inverse`."""
    y = jnp.maximum(scale - MIN_SCALE, 1e-6)
    return y + jnp.log(-jnp.expm1(-y)) - _SCALE_SHIFT


def affine_log_scale(raw_scale: Array) -> Array:
    """The transformer's log-scale ``B·r / (B + |r|)`` in ``(-B, B)``; mirrors
    :func:`pyroflows.functional.affine.affine_log_scale`."""
    return raw_scale / (1.0 + jnp.abs(raw_scale) * (1.0 / LOG_SCALE_BOUND))


#: the affine transformer's scale parameterizations; mirrors :data:`pyroflows.functional.affine.AFFINE_SCALES`
AFFINE_SCALES = ("exp", "softplus")


def check_affine_scale(scale: str) -> str:
    """``scale`` if it names one of :data:`AFFINE_SCALES`, else a ``ValueError`` naming them (the torch message)."""
    if scale not in AFFINE_SCALES:
        raise ValueError(f"the affine transformer's scale must be one of {AFFINE_SCALES} ('exp': exp of a log-scale "
                         f"soft-clamped to (-5, 5), the default; 'softplus': unbounded, linear growth), got {scale!r}")
    return scale


def _scale_and_log(raw_scale: Array, scale: str) -> tuple[Array, Array]:
    if scale == "softplus":
        a = affine_scale(raw_scale)
        return a, jnp.log(a)
    log_scale = affine_log_scale(raw_scale)
    return jnp.exp(log_scale), log_scale


def affine_forward(x: Array, params: Array, scale: str = "exp") -> tuple[Array, Array]:
    """``y = shift + a·x`` and ``log a`` (broadcast to ``y``); mirrors the torch ``affine_forward``."""
    a, log_a = _scale_and_log(params[..., 1], scale)
    y = params[..., 0] + a * x
    return y, jnp.broadcast_to(log_a, y.shape)


def affine_inverse(y: Array, params: Array, scale: str = "exp") -> tuple[Array, Array]:
    """``x = (y - shift) / a`` and ``log a`` (the *forward* log-derivative, broadcast to ``x``); mirrors the torch
    ``affine_inverse``."""
    if scale == "softplus":
        a, log_a = _scale_and_log(params[..., 1], scale)
        x = (y - params[..., 0]) / a
    else:  # multiply by exp(-s) rather than divide by exp(s)
        log_a = affine_log_scale(params[..., 1])
        x = (y - params[..., 0]) * jnp.exp(-log_a)
    return x, jnp.broadcast_to(log_a, x.shape)


def additive_forward(x: Array, params: Array) -> tuple[Array, Array]:
    """NICE coupling ``y = x + shift`` and a zero log-derivative (Dinh et al. 2014); mirrors the torch one."""
    y = x + params[..., 0]
    return y, jnp.zeros_like(y)


def additive_inverse(y: Array, params: Array) -> tuple[Array, Array]:
    """``x = y - shift`` and a zero log-derivative; mirrors the torch ``additive_inverse``."""
    x = y - params[..., 0]
    return x, jnp.zeros_like(x)
