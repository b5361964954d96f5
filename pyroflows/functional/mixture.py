"""Positive mixtures of monotone functions: a linear term plus a non-negative combination of logistic sigmoids.

``y = a·x + Σ_k w_k σ((x - b_k) / s_k)`` with ``a > 0``, ``w_k ≥ 0``, ``s_k > 0`` and ``σ`` the logistic sigmoid.
Every term is non-decreasing and the linear term strictly increasing, so the map is a bijection of R with
``dy/dx = a + Σ_k (w_k / s_k) σ(z_k) σ(-z_k) ≥ a``, ``z_k = (x - b_k)/s_k``. This is the monotone "sum of sigmoids"
family of neural autoregressive flows (Huang et al. 2018, "Neural Autoregressive Flows"), here with an explicit
linear term that makes the map onto R (as in the "mixture of logistics" CDFs of Ho et al. 2019, "Flow++").

Raw parameters (last axis, ``3K + 1``): ``[raw_a | raw_w (K) | raw_b (K) | raw_s (K)]`` with
``a = MIN_A + softplus(raw_a + c_a)`` (1 at raw 0), ``w_k = softplus(raw_w + c_w)`` (``0.1 / K`` at raw 0),
``b_k = raw_b + β_k`` with fixed, evenly spread offsets ``β = linspace(-3, 3, K)`` (so that components at raw zeros
are distinct and receive distinct gradients), ``s_k = MIN_S + softplus(raw_s + c_s)`` (1 at raw 0). Raw zeros give
``x ≤ y ≤ x + 0.1``: close to the identity.

The inverse has no closed form. Since ``0 ≤ Σ w σ ≤ Σ w``, the root lies in ``[(y - Σw)/a, y/a]``; it is found by
bisection on that bracket and polished by one differentiable Newton step (:mod:`pyroflows.functional.root`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .root import bisect_increasing, newton_polish

Tensor = torch.Tensor

MIN_A = 1e-3
MIN_S = 1e-2
TOTAL_W0 = 0.1
CENTER_SPREAD = 3.0
_A_SHIFT = math.log(math.expm1(1.0 - MIN_A))
_S_SHIFT = math.log(math.expm1(1.0 - MIN_S))


def num_params(count_bins: int) -> int:
    """Number of raw parameters per element for ``count_bins`` sigmoid components: ``3 · count_bins + 1``."""
    return 3 * count_bins + 1


def mixture_params(params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Constrained ``(a (...), w (..., K), b (..., K), s (..., K))`` from raw parameters ``(..., 3K + 1)``."""
    k = (params.shape[-1] - 1) // 3
    a = MIN_A + F.softplus(params[..., 0] + _A_SHIFT)
    w = F.softplus(params[..., 1 : k + 1] + math.log(math.expm1(TOTAL_W0 / k)))
    centers = torch.linspace(-CENTER_SPREAD, CENTER_SPREAD, k, dtype=params.dtype, device=params.device)
    if k == 1:
        centers = torch.zeros_like(centers)
    b = params[..., k + 1 : 2 * k + 1] + centers
    s = MIN_S + F.softplus(params[..., 2 * k + 1 :] + _S_SHIFT)
    return a, w, b, s


def _value_and_deriv(x: Tensor, a: Tensor, w: Tensor, b: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    z = (x.unsqueeze(-1) - b) / s
    sig = torch.sigmoid(z)
    y = a * x + (w * sig).sum(-1)
    # σ'(z) = σ(z) σ(-z): both factors in (0, 1], no overflow; the sum is ≥ a ≥ MIN_A > 0, so its log is finite.
    d = a + (w / s * sig * torch.sigmoid(-z)).sum(-1)
    return y, d


def _broadcast(z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    shape = torch.broadcast_shapes(z.shape, params.shape[:-1])
    return z.expand(shape), params.expand(shape + params.shape[-1:])


def mixture_forward(x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """``y = a x + Σ w σ((x - b)/s)`` and ``log(a + Σ (w/s) σ'((x - b)/s))`` elementwise.

    ``params`` broadcasts to ``x.shape + (3K + 1,)``.

    Example:
        >>> y, ladj = mixture_forward(torch.randn(4), torch.zeros(4, 25))  # K = 8, close to the identity
    """
    x, params = _broadcast(x, params)
    y, d = _value_and_deriv(x, *mixture_params(params))
    return y, torch.log(d)


def mixture_inverse(y: Tensor, params: Tensor, tol: float | None = None) -> tuple[Tensor, Tensor]:
    """``x`` with ``mixture_forward(x) = y`` and the FORWARD log-derivative at ``x``.

    Bisection on ``[(y - Σw)/a, y/a]`` (no autograd), then one Newton step with autograd so that ``dx/dθ`` and
    ``dx/dy`` are the implicit-function gradients.
    """
    y, params = _broadcast(y, params)
    a, w, b, s = mixture_params(params)
    with torch.no_grad():
        lo = (y - w.sum(-1)) / a
        hi = y / a
        x0 = bisect_increasing(lambda t: _value_and_deriv(t, a, w, b, s)[0], y, lo, hi, tol=tol)
    x = newton_polish(lambda t: _value_and_deriv(t, a, w, b, s), x0, y)
    _, d = _value_and_deriv(x, a, w, b, s)
    return x, torch.log(d)
