"""Planar flow ``y = x + û tanh(wᵀx + b)`` (Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows").

The invertibility condition ``wᵀû ≥ -1`` is enforced by the reparameterisation of the paper's appendix A:
``û = u + (m(wᵀu) - wᵀu) w / ‖w‖²`` with ``m(a) = -1 + softplus(a)``, so that ``wᵀû = m(wᵀu) > -1`` for every raw
``u, w``. The Jacobian is ``I + û wᵀ tanh'(z)``, ``z = wᵀx + b``, whose determinant is ``1 + wᵀû tanh'(z)``; with
``wᵀû = -1 + softplus(wᵀu)`` and ``tanh' = 1 - tanh²`` it is computed without cancellation as
``tanh²(z) + softplus(wᵀu) (1 - tanh²(z)) ≥ 0``.

The inverse has no closed form but reduces to one scalar monotone equation: with ``α = wᵀx``,
``wᵀy = α + wᵀû tanh(α + b)``, whose derivative ``1 + wᵀû tanh'`` is non-negative. It is solved by bracketed
bisection on ``[wᵀy - |wᵀû|, wᵀy + |wᵀû|]`` (the root always lies there since ``|tanh| < 1``) followed by one
differentiable Newton step (:func:`~pyroflows.functional.root.newton_polish`), and then ``x = y - û tanh(α + b)``.
Unlike Pyro's ``Planar``, which can only invert the output it cached, this inverts any ``y``.

Shapes: ``x``/``y`` ``(..., D)``; ``u``, ``w`` ``(..., D)``; ``b`` ``(...)``; all batch shapes broadcast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .root import bisect_increasing, newton_polish

#: ``softplus⁻¹(1) = log(e - 1)``: with ``wᵀu`` equal to it, ``m(wᵀu) = 0`` and ``û = 0`` (the identity)
IDENTITY_WTU = math.log(math.expm1(1.0))

Tensor = torch.Tensor


def _tiny(t: Tensor) -> float:
    return torch.finfo(t.dtype).tiny


def planar_constrain(u: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The constrained ``û`` of a planar flow and the scalars ``wᵀû`` and ``1 + wᵀû``.

    ``û = u + (m(wᵀu) - wᵀu) w / ‖w‖²`` with ``m(a) = -1 + softplus(a)`` (Rezende & Mohamed 2015, appendix A), so
    that ``wᵀû = m(wᵀu) ≥ -1`` for any raw ``u``, ``w``.

    Args:
        u: raw ``u``, shape ``(..., D)``.
        w: ``w``, shape ``(..., D)``.

    Returns:
        ``(û, wᵀû, 1 + wᵀû)``; the last is ``softplus(wᵀu)``, computed directly (no cancellation).

    Example:
        >>> u_hat, wu, one_plus = planar_constrain(torch.randn(3), torch.randn(3))
        >>> bool(wu >= -1)
        True
    """
    wu = (w * u).sum(-1)
    sp = F.softplus(wu)
    m = sp - 1.0
    wsq = (w * w).sum(-1).clamp_min(_tiny(w))
    u_hat = u + ((m - wu) / wsq).unsqueeze(-1) * w
    return u_hat, m, sp


def _log_det_term(t: Tensor, sp: Tensor) -> Tensor:
    """``log(1 + m tanh'(z))`` with ``m = sp - 1`` and ``t = tanh(z)``, as ``log(t² + sp (1 - t²))``."""
    t2 = t * t
    return torch.log((t2 + sp * (1.0 - t2)).clamp_min(_tiny(t)))


def planar_forward(x: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Planar map ``y = x + û tanh(wᵀx + b)`` and ``log|det ∂y/∂x| = log|1 + wᵀû tanh'(wᵀx + b)|``.

    Args:
        x: inputs ``(..., D)``.
        u: raw (unconstrained) ``u`` ``(..., D)``; ``û`` is formed by :func:`planar_constrain`.
        w: ``(..., D)``.
        b: bias ``(...)``.

    Returns:
        ``(y, log_det)`` with ``log_det`` of the broadcast batch shape.

    Example:
        >>> y, ld = planar_forward(torch.randn(10, 3), torch.randn(3), torch.randn(3), torch.tensor(0.1))

    Reference: Rezende & Mohamed 2015, eq. (10)-(12) and appendix A.
    """
    u_hat, _, sp = planar_constrain(u, w)
    t = torch.tanh((w * x).sum(-1) + b)
    y = x + u_hat * t.unsqueeze(-1)
    return y, _log_det_term(t, sp)


def planar_inverse(y: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Exact inverse of :func:`planar_forward` for any ``y`` and ``log|det ∂x/∂y|``.

    Solves ``wᵀy = α + wᵀû tanh(α + b)`` for ``α = wᵀx`` by bracketed bisection plus one differentiable Newton step
    (gradients follow the implicit-function theorem), then ``x = y - û tanh(α + b)``.

    Args:
        y: outputs ``(..., D)``.
        u, w, b: as in :func:`planar_forward`.

    Returns:
        ``(x, log_det)``, ``log_det = -log|1 + wᵀû tanh'(α + b)|``.

    Example:
        >>> u, w, b = torch.randn(3), torch.randn(3), torch.tensor(0.1)
        >>> x, ld = planar_inverse(planar_forward(torch.randn(10, 3), u, w, b)[0], u, w, b)

    Reference: Rezende & Mohamed 2015 (the map); the scalar reduction follows from ``x = y - û tanh(wᵀx + b)``.
    """
    u_hat, m, sp = planar_constrain(u, w)
    target = (w * y).sum(-1)
    b = b.to(target.dtype)

    def fn(a: Tensor) -> Tensor:
        return a + m * torch.tanh(a + b)

    def fn_and_deriv(a: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.tanh(a + b)
        t2 = t * t
        deriv = (t2 + sp * (1.0 - t2)).clamp_min(_tiny(t))
        return a + m * t, deriv

    half = m.detach().abs()
    alpha = bisect_increasing(fn, target, target - half, target + half)
    alpha = newton_polish(fn_and_deriv, alpha, target)
    t = torch.tanh(alpha + b)
    x = y - u_hat * t.unsqueeze(-1)
    return x, -_log_det_term(t, sp)
