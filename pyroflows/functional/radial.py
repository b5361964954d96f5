"""Radial flow ``y = x + β h(α, r) (x - x₀)`` (Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows").

``r = ‖x - x₀‖``, ``h(α, r) = 1 / (α + r)``, ``α = softplus(raw_α) > 0`` and ``β = -α + softplus(raw_β) ≥ -α``
(the invertibility condition of the paper's appendix A). The Jacobian is ``(1 + βh) I + βh' (x-x₀)(x-x₀)ᵀ / r``,
so ``log|det| = (D-1) log(1 + βh) + log(1 + βh + βh' r)`` with ``h' = -1/(α+r)²``. Writing ``s = α + β =
softplus(raw_β) ≥ 0`` both factors are ratios of non-negative terms, ``1 + βh = (s + r)/(α + r)`` and
``1 + βh + βh'r = (r² + 2αr + αs)/(α + r)²``, which is how they are computed (no cancellation).

The inverse is in closed form: the map only rescales ``x - x₀``, so ``ρ = ‖y - x₀‖ = r (s + r)/(α + r)``, i.e.
``r² + (s - ρ) r - αρ = 0``, whose positive root is taken in the cancellation-free form (``(-c + √(c²+4αρ))/2`` for
``c = s - ρ ≤ 0``, ``2αρ / (c + √(c²+4αρ))`` otherwise); then ``x = y - β/(s + r) (y - x₀)``.

Shapes: ``x``/``y`` ``(..., D)``; ``x0`` ``(..., D)``; ``raw_alpha``, ``raw_beta`` ``(...)``; batch shapes broadcast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _tiny(t: Tensor) -> float:
    return torch.finfo(t.dtype).tiny


def radial_alpha_beta(raw_alpha: Tensor, raw_beta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Constrained ``(α, β, α + β)`` of a radial flow from raw parameters.

    ``α = softplus(raw_alpha) > 0``, ``β = -α + softplus(raw_beta) ≥ -α`` (Rezende & Mohamed 2015, appendix A);
    ``α + β = softplus(raw_beta)`` is returned directly so that callers never cancel ``α`` against ``β``.

    Example:
        >>> a, b, s = radial_alpha_beta(torch.tensor(0.3), torch.tensor(-2.0))
        >>> bool(b >= -a)
        True
    """
    alpha = F.softplus(raw_alpha)
    s = F.softplus(raw_beta)
    return alpha, s - alpha, s


def _log_det(r: Tensor, alpha: Tensor, s: Tensor, dim: int) -> Tensor:
    tiny = _tiny(r)
    log_den = torch.log((alpha + r).clamp_min(tiny))
    log_scale = torch.log((s + r).clamp_min(tiny)) - log_den
    log_radial = torch.log((r * r + 2 * alpha * r + alpha * s).clamp_min(tiny)) - 2 * log_den
    return (dim - 1) * log_scale + log_radial


def _norm(v: Tensor) -> Tensor:
    """``‖v‖`` over the last axis with a finite gradient at 0."""
    return torch.sqrt((v * v).sum(-1).clamp_min(_tiny(v)))


def radial_forward(x: Tensor, x0: Tensor, raw_alpha: Tensor, raw_beta: Tensor) -> tuple[Tensor, Tensor]:
    """Radial map ``y = x + β/(α + r) (x - x₀)`` and ``log|det ∂y/∂x|``.

    Args:
        x: inputs ``(..., D)``.
        x0: centre ``(..., D)``.
        raw_alpha, raw_beta: raw parameters ``(...)``, constrained by :func:`radial_alpha_beta`.

    Returns:
        ``(y, log_det)``, ``log_det = (D-1) log(1 + βh) + log(1 + βh + βh'r)``.

    Example:
        >>> y, ld = radial_forward(torch.randn(10, 3), torch.zeros(3), torch.tensor(0.0), torch.tensor(1.0))

    Reference: Rezende & Mohamed 2015, eq. (14) and appendix A.
    """
    alpha, beta, s = radial_alpha_beta(raw_alpha, raw_beta)
    diff = x - x0
    r = _norm(diff)
    y = x + (beta / (alpha + r).clamp_min(_tiny(r))).unsqueeze(-1) * diff
    return y, _log_det(r, alpha, s, x.shape[-1])


def radial_inverse(y: Tensor, x0: Tensor, raw_alpha: Tensor, raw_beta: Tensor) -> tuple[Tensor, Tensor]:
    """Closed-form inverse of :func:`radial_forward` for any ``y``, and ``log|det ∂x/∂y|``.

    ``r`` is the positive root of ``r² + (α + β - ρ) r - αρ = 0`` with ``ρ = ‖y - x₀‖`` (computed stably), then
    ``x = x₀ + (y - x₀) / (1 + βh(r))``.

    Args:
        y: outputs ``(..., D)``.
        x0, raw_alpha, raw_beta: as in :func:`radial_forward`.

    Returns:
        ``(x, log_det)`` with ``log_det`` minus the forward log-determinant at ``x``.

    Example:
        >>> p = torch.zeros(3), torch.tensor(0.0), torch.tensor(1.0)
        >>> x, ld = radial_inverse(radial_forward(torch.randn(10, 3), *p)[0], *p)

    Reference: Rezende & Mohamed 2015 (the map); the quadratic follows from taking norms of ``y - x₀``.
    """
    alpha, beta, s = radial_alpha_beta(raw_alpha, raw_beta)
    tiny = _tiny(y)
    diff = y - x0
    rho = _norm(diff)
    c = s - rho
    disc = torch.sqrt((c * c + 4 * alpha * rho).clamp_min(tiny))
    pos = c > 0
    r = torch.where(pos, 2 * alpha * rho / torch.where(pos, c + disc, torch.ones_like(c)), 0.5 * (disc - c))
    x = y - (beta / (s + r).clamp_min(tiny)).unsqueeze(-1) * diff
    return x, -_log_det(r, alpha, s, y.shape[-1])
