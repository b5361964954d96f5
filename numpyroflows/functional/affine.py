"""Elementwise affine and additive transformers, in JAX.

Affine transformer (MAF, IAF, RealNVP; Papamakarios et al. 2017, Kingma et al. 2016, Dinh et al. 2017):
``y = shift + exp(s)·x`` with the log-scale ``s = r / (1 + |r|/B)``, a rational soft clamp of the raw parameter ``r``
into ``(-B, B)``, ``B = LOG_SCALE_BOUND = 5``: slope 1 at ``r = 0`` (raw zeros are the identity), bounded per layer so
deep stacks stay stable, and the log-derivative ``s`` comes without a logarithm. Raw layout on the last axis:
``[shift, raw_scale]``. ``scale="softplus"`` instead takes the scale ``MIN_SCALE + softplus(r + c)`` of
:func:`affine_scale` (``r = 0`` is the identity; FlowJAX's affine transformer is a softplus too): it grows linearly in
``r`` with no upper bound, and its log-derivative ``log a`` has slope ``1 - e^{-1} ≈ 0.63`` in ``r`` at ``r = 0``
where the exponential form's has slope 1; see :data:`AFFINE_SCALES`.

Diagonal scale (``DiagonalAffine``, the LU diagonal, guide and encoder heads): ``scale = MIN_SCALE + softplus(raw +
c)`` with ``c`` such that ``raw = 0`` gives 1 (:func:`affine_scale`); it grows linearly, not exponentially, in its raw
parameter and is inverted in closed form by :func:`affine_scale_inverse` to start a layer at a given scale.

Additive (NICE, Dinh et al. 2014): ``y = x + shift``, raw layout ``[shift]``, log-det 0.

Every function is pure and elementwise over arrays of any batch shape (jit- and vmap-able). Formulas, constants and
raw layouts are those of ``pyroflows.functional.affine``, so raw parameters move between the packages unchanged.
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
    """``log(1 + e^u)``, and ``u`` itself above 20, exactly as ``torch.nn.functional.softplus`` (so values match
    pyroflows to rounding), written with ``where`` so that neither branch overflows."""
    big = u > _SOFTPLUS_THRESHOLD
    return jnp.where(big, u, jnp.log1p(jnp.exp(jnp.where(big, 0.0, u))))


def scale_shift(min_scale: float) -> float:
    """The constant ``c`` of :func:`affine_scale` for a floor ``min_scale``: ``softplus(c) = 1 - min_scale``."""
    return math.log(math.expm1(1.0 - min_scale))


def affine_scale(raw_scale: Array, min_scale: float = MIN_SCALE) -> Array:
    """Positive scale ``min_scale + softplus(raw + c)`` from its raw parameter (``raw = 0`` gives 1)."""
    shift = _SCALE_SHIFT if min_scale == MIN_SCALE else scale_shift(min_scale)
    return min_scale + _softplus(raw_scale + shift)


def affine_scale_inverse(scale: Array, min_scale: float = MIN_SCALE) -> Array:
    """The raw parameter giving ``scale``: the inverse of :func:`affine_scale`, ``raw = softplus⁻¹(scale - min_scale) -
    c`` with ``softplus⁻¹(y) = y + log(1 - e^{-y})``; scales at or below the floor map to the raw value of
    ``min_scale + 1e-6``."""
    y = jnp.maximum(scale - min_scale, 1e-6)
    return y + jnp.log(-jnp.expm1(-y)) - scale_shift(min_scale)


def affine_log_scale(raw_scale: Array) -> Array:
    """The transformer's log-scale ``B·r / (B + |r|)``: soft-clamped into ``(-B, B)`` with ``B = LOG_SCALE_BOUND``,
    slope 1 at ``r = 0`` (so raw zeros are the identity)."""
    return raw_scale / (1.0 + jnp.abs(raw_scale) * (1.0 / LOG_SCALE_BOUND))


#: the affine transformer's scale parameterizations: ``"exp"`` (the default), ``exp`` of the soft-clamped
#: :func:`affine_log_scale`; ``"softplus"``, :func:`affine_scale`
AFFINE_SCALES = ("exp", "softplus")


def check_affine_scale(scale: str) -> str:
    """``scale`` if it names one of :data:`AFFINE_SCALES`, else a ``ValueError`` naming them (word for word the
    message pyroflows raises)."""
    if scale not in AFFINE_SCALES:
        raise ValueError(f"the affine transformer's scale must be one of {AFFINE_SCALES} ('exp': exp of a log-scale "
                         f"soft-clamped to (-5, 5), the default; 'softplus': unbounded, linear growth), got {scale!r}")
    return scale


def _scale_and_log(raw_scale: Array, scale: str, min_scale: float) -> tuple[Array, Array]:
    if scale == "softplus":
        a = affine_scale(raw_scale, min_scale)
        return a, jnp.log(a)
    log_scale = affine_log_scale(raw_scale)
    return jnp.exp(log_scale), log_scale


def affine_forward(x: Array, params: Array, scale: str = "exp", min_scale: float = MIN_SCALE
                   ) -> tuple[Array, Array]:
    """``y = shift + a·x`` and ``log a`` (the log-derivative, broadcast to ``y``), with ``a = exp(affine_log_scale(r))``
    (``scale="exp"``) or ``a = affine_scale(r, min_scale)`` (``scale="softplus"``).

    ``params`` is ``(..., 2)`` laid out ``[shift, raw_scale]``; its batch shape broadcasts against ``x``. Pure and
    elementwise (jit- and vmap-able)."""
    a, log_a = _scale_and_log(params[..., 1], scale, min_scale)
    y = params[..., 0] + a * x
    return y, jnp.broadcast_to(log_a, y.shape)


def affine_inverse(y: Array, params: Array, scale: str = "exp", min_scale: float = MIN_SCALE
                   ) -> tuple[Array, Array]:
    """``x = (y - shift) / a`` and ``log a`` (the *forward* log-derivative, broadcast to ``x``, as every kernel's
    inverse returns it); ``params``, ``scale``, ``min_scale`` and ``a`` as in :func:`affine_forward`."""
    if scale == "softplus":
        a, log_a = _scale_and_log(params[..., 1], scale, min_scale)
        x = (y - params[..., 0]) / a
    else:  # multiply by exp(-s) rather than divide by exp(s)
        log_a = affine_log_scale(params[..., 1])
        x = (y - params[..., 0]) * jnp.exp(-log_a)
    return x, jnp.broadcast_to(log_a, x.shape)


def additive_forward(x: Array, params: Array) -> tuple[Array, Array]:
    """NICE's additive coupling ``y = x + shift`` and a zero log-derivative (Dinh et al. 2014, "NICE: Non-linear
    Independent Components Estimation"); ``params`` is ``(..., 1)``, ``[shift]``, broadcasting against ``x``."""
    y = x + params[..., 0]
    return y, jnp.zeros_like(y)


def additive_inverse(y: Array, params: Array) -> tuple[Array, Array]:
    """``x = y - shift`` and a zero log-derivative: the inverse of :func:`additive_forward`, same ``params``."""
    x = y - params[..., 0]
    return x, jnp.zeros_like(x)
