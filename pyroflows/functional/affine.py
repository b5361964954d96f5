"""Elementwise affine and additive transformers.

Affine transformer (MAF, IAF, RealNVP; Papamakarios et al. 2017, Kingma et al. 2016, Dinh et al. 2017):
``y = shift + exp(s)·x`` with the log-scale ``s = r / (1 + |r|/B)``, a rational soft clamp of the raw parameter ``r``
into ``(-B, B)``, ``B = LOG_SCALE_BOUND = 5``: slope 1 at ``r = 0`` (raw zeros are the identity), bounded per layer so
deep stacks stay stable, and the log-derivative ``s`` comes without a logarithm. Raw layout on the last axis:
``[shift, raw_scale]``.

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


def affine_scale(raw_scale: Tensor) -> Tensor:
    """Positive scale from its raw parameter (``raw = 0`` gives 1)."""
    return MIN_SCALE + F.softplus(raw_scale + _SCALE_SHIFT)


def affine_scale_inverse(scale: Tensor) -> Tensor:
    """The raw parameter giving ``scale``: the inverse of :func:`affine_scale`, ``raw = softplus⁻¹(scale - MIN_SCALE) -
    c`` with ``softplus⁻¹(y) = y + log(1 - e^{-y})``; scales at or below the floor map to the raw value of
    ``MIN_SCALE + 1e-6``."""
    y = (scale - MIN_SCALE).clamp_min(1e-6)
    return y + torch.log(-torch.expm1(-y)) - _SCALE_SHIFT


def affine_log_scale(raw_scale: Tensor) -> Tensor:
    """The transformer's log-scale ``B·r / (B + |r|)``: soft-clamped into ``(-B, B)`` with ``B = LOG_SCALE_BOUND``,
    slope 1 at ``r = 0`` (so raw zeros are the identity)."""
    return raw_scale / (1.0 + raw_scale.abs() * (1.0 / LOG_SCALE_BOUND))


def affine_forward(x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """``y = shift + exp(s)·x`` and ``s`` (the log-derivative, broadcast to ``y``), ``s = affine_log_scale(raw)``."""
    log_scale = affine_log_scale(params[..., 1])
    y = torch.addcmul(params[..., 0], torch.exp(log_scale), x)
    return y, log_scale.expand(y.shape)


def affine_inverse(y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """``x = (y - shift)·exp(-s)`` and ``s`` (the *forward* log-derivative, broadcast to ``x``, as every kernel's
    inverse returns it)."""
    log_scale = affine_log_scale(params[..., 1])
    x = (y - params[..., 0]) * torch.exp(-log_scale)
    return x, log_scale.expand(x.shape)


def additive_forward(x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    y = x + params[..., 0]
    return y, torch.zeros_like(y)


def additive_inverse(y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    x = y - params[..., 0]
    return x, torch.zeros_like(x)
