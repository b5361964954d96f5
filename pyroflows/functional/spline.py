"""Monotone rational-quadratic splines with linear tails (Durkan et al. 2019, "Neural Spline Flows").

On ``[-bound, bound]`` the map is a piecewise rational-quadratic function through ``K + 1`` knots with positive
derivatives at the knots; outside it is the identity (derivative 1 at both ends, so the map is C¹). Raw parameters
are unconstrained: ``K`` bin widths, ``K`` bin heights and ``K - 1`` interior derivatives, last axis laid out as
``[widths | heights | derivatives]``:

    widths  w_j = 2·bound·(m + (1 - m·K)·softmax(raw_w)_j),   knots x_j = -bound + Σ_{i<j} w_i   (same for heights)
    derivs  d_j = m_d + softplus(raw_d_j + c)  (j = 1..K-1),  d_0 = d_K = 1

with ``c`` chosen so that all-zero raw parameters give the identity. In bin ``k`` with ``ξ = (x - x_k)/w_k`` and
``s = h_k / w_k``:

    y = y_k + h_k (s ξ² + d_k ξ(1-ξ)) / (s + (d_{k+1} + d_k - 2s) ξ(1-ξ))

and the inverse is the root of a quadratic in ``ξ``, taken in the cancellation-free form ``2c / (-b - √(b² - 4ac))``.

Speed: the parameters of the selected bin are computed by :class:`_BinParams`, an autograd function whose backward
maps the six per-element gradients straight back to the raw parameters (a few ops on ``(..., K)`` tensors) instead of
differentiating through softmax, cumsum and gather. The rational-quadratic itself is plain autograd on per-element
tensors, so gradients with respect to the input are exact autograd. Second derivatives with respect to the spline
*parameters* are not supported (first derivatives, and any order with respect to the input, are).

Numerics: inputs are clamped into the bound before any division, square root or logarithm, and the identity tails are
added back without ``where``; values and gradients stay finite for inputs far outside the bound.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

Tensor = torch.Tensor

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3
# softplus(0 + _DERIV_SHIFT) + MIN_DERIVATIVE == 1: raw zeros are the identity.
_DERIV_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


def num_params(count_bins: int) -> int:
    """Number of raw parameters per element for ``count_bins`` bins."""
    return 3 * count_bins - 1


def spline_knots(params: Tensor, bound: float) -> tuple[Tensor, Tensor, Tensor]:
    """Knot abscissae, ordinates and derivatives, each ``(..., K + 1)``, from raw parameters ``(..., 3K - 1)``."""
    knots, d, _, _ = _knots_and_derivs(params, bound)
    return knots[..., 0, :], knots[..., 1, :], d


def _knots_and_derivs(params: Tensor, bound: float):
    k = (params.shape[-1] + 1) // 3
    uwh, ud = params.split([2 * k, k - 1], dim=-1)
    uwh = uwh.unflatten(-1, (2, k))
    e = torch.exp(uwh - uwh.amax(-1, keepdim=True))
    probs = e / e.sum(-1, keepdim=True)  # softmax over the bins, widths and heights at once: (..., 2, K)
    cum = torch.cumsum(MIN_BIN_WIDTH + (1.0 - MIN_BIN_WIDTH * k) * probs, dim=-1)
    cum = cum / cum[..., -1:]  # exactly 1 at the end: the last knot is exactly +bound
    knots = F.pad(cum, (1, 0)) * (2 * bound) - bound  # (..., 2, K + 1)
    sig = torch.sigmoid(ud + _DERIV_SHIFT)
    d = F.pad(MIN_DERIVATIVE + F.softplus(ud + _DERIV_SHIFT), (1, 1), value=1.0)  # (..., K + 1)
    return knots, d, probs, sig


class _BinParams(torch.autograd.Function):
    """``(x_k, w_k, y_k, h_k, d_k, d_{k+1})`` of the bin holding each value, with a fused backward to the raw params.

    ``axis`` 0 searches the bins along x (forward map), 1 along y (inverse map). ``value`` must lie in the bound and
    ``params`` must already have the full batch shape ``value.shape + (3K - 1,)``.
    """

    @staticmethod
    def forward(ctx, params: Tensor, value: Tensor, bound: float, axis: int):  # type: ignore[override]
        knots, d, probs, sig = _knots_and_derivs(params, bound)
        idx = (value.unsqueeze(-1) >= knots[..., axis, 1:-1]).sum(-1, keepdim=True)  # (..., 1) in 0..K-1
        two = torch.cat([idx, idx + 1], -1)  # (..., 2)
        kx = torch.gather(knots, -1, two.unsqueeze(-2).expand(knots.shape[:-1] + (2,)))  # (..., 2, 2)
        dd = torch.gather(d, -1, two)  # (..., 2)
        ctx.save_for_backward(idx, probs, sig)
        ctx.bound = bound
        x0, y0 = kx[..., 0, 0], kx[..., 1, 0]
        return x0, kx[..., 0, 1] - x0, y0, kx[..., 1, 1] - y0, dd[..., 0], dd[..., 1]

    @staticmethod
    @once_differentiable
    def backward(ctx, g_x0, g_w, g_y0, g_h, g_d0, g_d1):  # type: ignore[override]
        idx, probs, sig = ctx.saved_tensors
        k = probs.shape[-1]
        bins = torch.arange(k, device=idx.device)
        before = (bins < idx).to(probs.dtype).unsqueeze(-2)  # (..., 1, K): bins left of the selected one
        at = (bins == idx).to(probs.dtype)  # (..., K)
        scale = 2 * ctx.bound * (1.0 - MIN_BIN_WIDTH * k)
        g_start = torch.stack([g_x0, g_y0], -1).unsqueeze(-1)  # (..., 2, 1)
        g_size = torch.stack([g_w, g_h], -1).unsqueeze(-1)
        g_p = scale * (g_start * before + g_size * at.unsqueeze(-2))  # dL/dprobs, (..., 2, K)
        g_wh = probs * (g_p - (probs * g_p).sum(-1, keepdim=True))  # softmax backward
        g_d = (g_d0.unsqueeze(-1) * at[..., 1:] + g_d1.unsqueeze(-1) * at[..., :-1]) * sig  # (..., K - 1)
        return torch.cat([g_wh.flatten(-2), g_d], -1), None, None, None


def _bin_params(params: Tensor, value: Tensor, bound: float, axis: int):
    params = params.expand(value.shape + params.shape[-1:])
    return _BinParams.apply(params, value, bound, axis)


def _log_deriv(xi: Tensor, s: Tensor, d0: Tensor, d1: Tensor, den: Tensor) -> Tensor:
    omx = 1 - xi
    num = d1 * xi * xi + 2 * s * xi * omx + d0 * omx * omx
    return 2 * torch.log(s) + torch.log(num) - 2 * torch.log(den)


def rqs_forward(x: Tensor, params: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """``y = spline(x)`` and ``log |dy/dx|`` elementwise; ``params`` broadcasts to ``x.shape + (3K - 1,)``."""
    xc = x.clamp(-bound, bound)
    x0, w, y0, h, d0, d1 = _bin_params(params, xc, bound, 0)
    s = h / w
    xi = ((xc - x0) / w).clamp(0, 1)
    t = xi * (1 - xi)
    den = s + (d1 + d0 - 2 * s) * t
    y = y0 + h * (s * xi * xi + d0 * t) / den + (x - xc)  # identity tails: y_in is ±bound at the ends
    ladj = _log_deriv(xi, s, d0, d1, den) * (x == xc).to(x.dtype)
    return y, ladj


def rqs_inverse(y: Tensor, params: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """``x = spline⁻¹(y)`` (closed form) and ``log |dy/dx|`` at ``x`` (the *forward* log-derivative)."""
    yc = y.clamp(-bound, bound)
    x0, w, y0, h, d0, d1 = _bin_params(params, yc, bound, 1)
    s = h / w
    dy = yc - y0
    q = d1 + d0 - 2 * s
    a = h * (s - d0) + dy * q
    b = h * d0 - dy * q
    c = -s * dy
    disc = (b * b - 4 * a * c).clamp_min(0)
    xi = ((2 * c) / (-b - torch.sqrt(disc))).clamp(0, 1)
    x = x0 + xi * w + (y - yc)
    den = s + q * xi * (1 - xi)
    ladj = _log_deriv(xi, s, d0, d1, den) * (y == yc).to(y.dtype)
    return x, ladj
