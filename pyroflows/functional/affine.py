"""Elementwise affine and additive transformers.

Affine: ``y = shift + scale * x`` with ``scale = MIN_SCALE + softplus(raw + c)``, where ``c`` is chosen so that
``raw = 0`` gives ``scale = 1``. The softplus grows linearly (not exponentially) in the raw parameter, which keeps deep
stacks stable; the floor keeps the inverse finite. Raw layout on the last axis: ``[shift, raw_scale]``.
Additive (NICE, Dinh et al. 2014): ``y = x + shift``, raw layout ``[shift]``, log-det 0.

Speed: the affine map runs as one autograd node (:class:`_Affine`) with analytic gradients,
``∂/∂x = g_y·scale`` (forward), ``∂/∂shift = g_y``, ``∂/∂raw = (g_y·x + g_l/scale)·sigmoid(raw + c)``, on a
parameter-first ``(2, N)`` layout that conditioners produce for free (:func:`pyroflows.nn.mlp.params_view`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

Tensor = torch.Tensor

MIN_SCALE = 1e-3
_SCALE_SHIFT = math.log(math.expm1(1.0 - MIN_SCALE))


def affine_scale(raw_scale: Tensor) -> Tensor:
    """Positive scale from its raw parameter (``raw = 0`` gives 1)."""
    return MIN_SCALE + F.softplus(raw_scale + _SCALE_SHIFT)


class _Affine(torch.autograd.Function):
    """``(params_t (2, *S), value (S)) -> (output, log scale)``; forward ``y = shift + scale·x`` or inverse
    ``x = (y - shift)/scale``. The log-derivative returned is ``log scale`` (of the forward map) in both cases."""

    @staticmethod
    def forward(ctx, params_t: Tensor, value: Tensor, inverse: bool):  # type: ignore[override]
        shift, raw = params_t[0], params_t[1]
        u = raw + _SCALE_SHIFT
        scale = F.softplus(u).add_(MIN_SCALE)
        out = (value - shift).div_(scale) if inverse else torch.addcmul(shift, scale, value)
        ctx.save_for_backward(u, scale, out if inverse else value)
        ctx.inverse = inverse
        return out, torch.log(scale)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out: Tensor, g_ladj: Tensor):  # type: ignore[override]
        u, scale, x = ctx.saved_tensors  # x: the base-side value in both directions
        if ctx.inverse:
            g_y = g_out / scale  # x = (y - shift)/scale
            g_shift = -g_y
            g_scale = torch.addcmul(g_ladj, g_out, x, value=-1).div_(scale)
            g_value = g_y
        else:
            g_shift = g_out  # y = shift + scale·x
            g_scale = torch.addcmul(g_ladj / scale, g_out, x)
            g_value = g_out * scale
        return torch.stack([g_shift, g_scale.mul_(torch.sigmoid(u))]), g_value, None


def _apply(value: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    shape = torch.broadcast_shapes(value.shape, params.shape[:-1])
    if params.shape[:-1] != shape:
        params = params.expand(shape + params.shape[-1:])
    if value.shape != shape:
        value = value.expand(shape)
    return _Affine.apply(params.movedim(-1, 0).contiguous(), value.contiguous(), inverse)


def affine_forward(x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """``y = shift + scale·x`` and ``log scale`` (broadcast to ``y``)."""
    return _apply(x, params, False)


def affine_inverse(y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """``x = (y - shift)/scale`` and ``log scale`` (the *forward* log-derivative, broadcast to ``x``)."""
    return _apply(y, params, True)


def additive_forward(x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    y = x + params[..., 0]
    return y, torch.zeros_like(y)


def additive_inverse(y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    x = y - params[..., 0]
    return x, torch.zeros_like(x)
