"""Elementwise affine and additive transformers.

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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

MIN_SCALE = 1e-3
_SCALE_SHIFT = math.log(math.expm1(1.0 - MIN_SCALE))
#: bound B of the affine transformer's log-scale: one layer scales by at most e^5 ≈ 148 either way
LOG_SCALE_BOUND = 5.0


def scale_shift(min_scale: float) -> float:
    """The constant ``c`` of :func:`affine_scale` for a floor ``min_scale``: ``softplus(c) = 1 - min_scale``."""
    return math.log(math.expm1(1.0 - min_scale))


def affine_scale(raw_scale: Tensor, min_scale: float = MIN_SCALE) -> Tensor:
    """Positive scale ``min_scale + softplus(raw + c)`` from its raw parameter (``raw = 0`` gives 1)."""
    shift = _SCALE_SHIFT if min_scale == MIN_SCALE else scale_shift(min_scale)
    return min_scale + F.softplus(raw_scale + shift)


def affine_scale_inverse(scale: Tensor, min_scale: float = MIN_SCALE) -> Tensor:
    """The raw parameter giving ``scale``: the inverse of :func:`affine_scale`, ``raw = softplus⁻¹(scale - min_scale) -
    c`` with ``softplus⁻¹(y) = y + log(1 - e^{-y})``; scales at or below the floor map to the raw value of
    ``min_scale + 1e-6``."""
    y = (scale - min_scale).clamp_min(1e-6)
    return y + torch.log(-torch.expm1(-y)) - scale_shift(min_scale)


def affine_log_scale(raw_scale: Tensor) -> Tensor:
    """The transformer's log-scale ``B·r / (B + |r|)``: soft-clamped into ``(-B, B)`` with ``B = LOG_SCALE_BOUND``,
    slope 1 at ``r = 0`` (so raw zeros are the identity)."""
    return raw_scale / (1.0 + raw_scale.abs() * (1.0 / LOG_SCALE_BOUND))


#: the affine transformer's scale parameterizations: ``"exp"`` (the default), ``exp`` of the soft-clamped
#: :func:`affine_log_scale`; ``"softplus"``, :func:`affine_scale`
AFFINE_SCALES = ("exp", "softplus")


def check_affine_scale(scale: str) -> str:
    """``scale`` if it names one of :data:`AFFINE_SCALES`, else a ``ValueError`` naming them."""
    if scale not in AFFINE_SCALES:
        raise ValueError(f"the affine transformer's scale must be one of {AFFINE_SCALES} ('exp': exp of a log-scale "
                         f"soft-clamped to (-5, 5), the default; 'softplus': unbounded, linear growth), got {scale!r}")
    return scale


def _scale_and_log(raw_scale: Tensor, scale: str, min_scale: float) -> tuple[Tensor, Tensor]:
    if scale == "softplus":
        s = affine_scale(raw_scale, min_scale)
        return s, torch.log(s)
    log_scale = affine_log_scale(raw_scale)
    return torch.exp(log_scale), log_scale


def affine_forward(x: Tensor, params: Tensor, scale: str = "exp", min_scale: float = MIN_SCALE
                   ) -> tuple[Tensor, Tensor]:
    """``y = shift + a·x`` and ``log a`` (the log-derivative, broadcast to ``y``), with ``a = exp(affine_log_scale(r))``
    (``scale="exp"``) or ``a = affine_scale(r)`` (``scale="softplus"``)."""
    a, log_a = _scale_and_log(params[..., 1], scale, min_scale)
    y = torch.addcmul(params[..., 0], a, x)
    return y, log_a.expand(y.shape)


def affine_inverse(y: Tensor, params: Tensor, scale: str = "exp", min_scale: float = MIN_SCALE
                   ) -> tuple[Tensor, Tensor]:
    """``x = (y - shift) / a`` and ``log a`` (the *forward* log-derivative, broadcast to ``x``, as every kernel's
    inverse returns it); ``a`` as in :func:`affine_forward`."""
    if scale == "softplus":
        a, log_a = _scale_and_log(params[..., 1], scale, min_scale)
        x = (y - params[..., 0]) / a
    else:  # multiply by exp(-s) rather than divide by exp(s)
        log_a = affine_log_scale(params[..., 1])
        x = (y - params[..., 0]) * torch.exp(-log_a)
    return x, log_a.expand(x.shape)


def additive_forward(x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    y = x + params[..., 0]
    return y, torch.zeros_like(y)


def additive_inverse(y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    x = y - params[..., 0]
    return x, torch.zeros_like(x)
