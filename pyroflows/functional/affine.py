"""Elementwise affine and additive transformers.

Affine: ``y = shift + scale * x`` with ``scale = MIN_SCALE + softplus(raw + c)``, where ``c`` is chosen so that
``raw = 0`` gives ``scale = 1``. The softplus grows linearly (not exponentially) in the raw parameter, which keeps deep
stacks stable; the floor keeps the inverse finite. Raw layout on the last axis: ``[shift, raw_scale]``.
Additive (NICE, Dinh et al. 2014): ``y = x + shift``, raw layout ``[shift]``, log-det 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

MIN_SCALE = 1e-3
_SCALE_SHIFT = math.log(math.expm1(1.0 - MIN_SCALE))


def affine_scale(raw_scale: Tensor) -> Tensor:
    """Positive scale from its raw parameter (``raw = 0`` gives 1)."""
    return MIN_SCALE + F.softplus(raw_scale + _SCALE_SHIFT)


def affine_scale_inverse(scale: Tensor) -> Tensor:
    """The raw parameter giving ``scale``: the inverse of :func:`affine_scale`, ``raw = softplus⁻¹(scale - MIN_SCALE) -
    c`` with ``softplus⁻¹(y) = y + log(1 - e^{-y})``; scales at or below the floor map to the raw value of
    ``MIN_SCALE + 1e-6``."""
    y = (scale - MIN_SCALE).clamp_min(1e-6)
    return y + torch.log(-torch.expm1(-y)) - _SCALE_SHIFT


def affine_forward(x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """``y = shift + scale·x`` and ``log scale`` (broadcast to ``y``)."""
    scale = affine_scale(params[..., 1])
    y = torch.addcmul(params[..., 0], scale, x)
    return y, torch.log(scale).expand(y.shape)


def affine_inverse(y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """``x = (y - shift)/scale`` and ``log scale`` (the *forward* log-derivative, broadcast to ``x``)."""
    scale = affine_scale(params[..., 1])
    x = (y - params[..., 0]) / scale
    return x, torch.log(scale).expand(x.shape)


def additive_forward(x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    y = x + params[..., 0]
    return y, torch.zeros_like(y)


def additive_inverse(y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    x = y - params[..., 0]
    return x, torch.zeros_like(x)
