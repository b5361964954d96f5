"""Linear bijections (LU, Householder) and fixed elementwise nonlinearities (leaky ReLU, sigmoid, tanh).

Pure functions: no parameters, no state. Every ``*_forward`` returns ``(y, log|det ∂y/∂x|)`` and every ``*_inverse``
returns ``(x, log|det ∂x/∂y|)``; log-determinants are summed over the last axis (shape ``batch``). Matrices and
vectors may carry their own batch shape (parameters produced from a context); it broadcasts against the input's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .affine import affine_scale

Tensor = torch.Tensor

# --------------------------------------------------------------------------------------------------- LU


def lu_factors(packed: Tensor, raw_diag: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Unit lower triangular ``L`` and upper triangular ``U`` with positive diagonal from unconstrained parameters.

    ``L = I + tril(packed, -1)``, ``U = triu(packed, 1) + diag(d)`` with ``d = 1e-3 + softplus(raw_diag + c)`` (``c``
    such that ``raw_diag = 0`` gives ``d = 1``, see :func:`pyroflows.functional.affine.affine_scale`).

    Args:
        packed: ``(..., D, D)``; its strict lower part fills ``L``, its strict upper part fills ``U``.
        raw_diag: ``(..., D)``.

    Returns:
        ``(L, U, log d)``.
    """
    diag = affine_scale(raw_diag)
    lower = torch.tril(packed, -1) + torch.diag_embed(torch.ones_like(diag))
    upper = torch.triu(packed, 1) + torch.diag_embed(diag)
    return lower, upper, torch.log(diag)


def lu_forward(
    x: Tensor, lower: Tensor, upper: Tensor, log_diag: Tensor, perm: Tensor, shift: Tensor
) -> tuple[Tensor, Tensor]:
    """``y = P L U x + b`` with ``(P z)_i = z_{perm_i}``; ``log|det| = Σ log diag(U)``.

    The LU-decomposed linear layer of Glow (Kingma & Dhariwal, 2018, "Glow: Generative Flow with Invertible 1x1
    Convolutions"), on vectors.

    Args:
        x: ``(..., D)``.
        lower, upper: ``(D, D)`` or ``(B..., D, D)`` from :func:`lu_factors`; ``log_diag``: ``(D,)`` or ``(B..., D)``.
        perm: ``(D,)`` long tensor; shift: ``(D,)`` or ``(B..., D)``.
    """
    weight = (lower @ upper)[..., perm, :]
    if weight.dim() == 2:
        z = x @ weight.mT
    else:
        z = (x.unsqueeze(-2) @ weight.mT).squeeze(-2)
    y = z + shift
    return y, torch.broadcast_to(log_diag.sum(-1), y.shape[:-1])


def lu_inverse(
    y: Tensor, lower: Tensor, upper: Tensor, log_diag: Tensor, inv_perm: Tensor, shift: Tensor
) -> tuple[Tensor, Tensor]:
    """``x = U⁻¹ L⁻¹ Pᵀ (y - b)`` by two triangular solves; ``log|det| = -Σ log diag(U)``.

    Args as in :func:`lu_forward`, with ``inv_perm = argsort(perm)``. Batched matrices (from a context) broadcast
    against the batch shape of ``y``.
    """
    z = (y - shift)[..., inv_perm]
    if lower.dim() == 2:
        # One solve for the whole batch: rows of z solve  xᵀ Uᵀ Lᵀ = zᵀ.
        flat = z.reshape(-1, z.shape[-1])
        w = torch.linalg.solve_triangular(lower.mT, flat, upper=True, left=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper.mT, w, upper=False, left=False).reshape(z.shape)
    else:
        w = torch.linalg.solve_triangular(lower.mT, z.unsqueeze(-2), upper=True, left=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper.mT, w, upper=False, left=False).squeeze(-2)
    return x, torch.broadcast_to(-log_diag.sum(-1), x.shape[:-1])


# --------------------------------------------------------------------------------------------------- Householder


def cholesky_affine_forward(x: Tensor, loc: Tensor, scale_tril: Tensor) -> tuple[Tensor, Tensor]:
    """``y = loc + L x`` for a lower-triangular ``L`` with positive diagonal; ``log|det| = Σ log diag(L)``.

    The map from ``N(0, I)`` to ``N(loc, L Lᵀ)`` (``L`` a Cholesky factor of the covariance).

    Args:
        x: ``(..., D)``; loc: ``(D,)``; scale_tril: ``(D, D)``, lower triangular (the upper part is ignored).
    """
    y = loc + x @ torch.tril(scale_tril).mT
    return y, torch.broadcast_to(torch.log(torch.diagonal(scale_tril)).sum(-1), y.shape[:-1])


def cholesky_affine_inverse(y: Tensor, loc: Tensor, scale_tril: Tensor) -> tuple[Tensor, Tensor]:
    """``x = L⁻¹ (y - loc)`` by one triangular solve; ``log|det| = -Σ log diag(L)``."""
    rows = (y - loc).reshape(-1, y.shape[-1]).mT
    x = torch.linalg.solve_triangular(torch.tril(scale_tril), rows, upper=False).mT.reshape(y.shape)
    return x, torch.broadcast_to(-torch.log(torch.diagonal(scale_tril)).sum(-1), y.shape[:-1])


def _reflect(x: Tensor, v: Tensor) -> Tensor:
    norm2 = (v * v).sum(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    return x - (2.0 * (x * v).sum(-1, keepdim=True) / norm2) * v


def householder_forward(x: Tensor, vectors: Tensor) -> tuple[Tensor, Tensor]:
    """``y = H_K ⋯ H_1 x`` with ``H_k = I - 2 v_k v_kᵀ / ‖v_k‖²``; orthogonal, so ``log|det| = 0``.

    Tomczak & Welling (2016), "Improving Variational Auto-Encoders using Householder Flow".

    Args:
        x: ``(..., D)``.
        vectors: ``(K, D)`` or ``(B..., K, D)``; ``v_1`` is applied first.
    """
    for k in range(vectors.shape[-2]):
        x = _reflect(x, vectors[..., k, :])
    return x, x.new_zeros(x.shape[:-1])


def householder_inverse(y: Tensor, vectors: Tensor) -> tuple[Tensor, Tensor]:
    """``x = H_1 ⋯ H_K y`` (each reflection is its own inverse; reverse order); ``log|det| = 0``."""
    for k in reversed(range(vectors.shape[-2])):
        y = _reflect(y, vectors[..., k, :])
    return y, y.new_zeros(y.shape[:-1])


# --------------------------------------------------------------------------------------------------- leaky ReLU


def leaky_relu_forward(x: Tensor, slope: Tensor) -> tuple[Tensor, Tensor]:
    """``y = x`` for ``x ≥ 0``, ``slope · x`` otherwise; ``log|det| = Σ_{x_i < 0} log slope_i``.

    An invertible elementwise nonlinearity (Papamakarios et al., 2021, "Normalizing Flows for Probabilistic
    Modeling and Inference", section 3.1).

    Args:
        x: ``(..., D)``; slope: positive, ``(D,)`` or ``(B..., D)``.
    """
    neg = x < 0
    y = torch.where(neg, slope * x, x)
    ld = torch.where(neg, torch.log(slope), torch.zeros_like(slope)).sum(-1)
    return y, torch.broadcast_to(ld, y.shape[:-1])


def leaky_relu_inverse(y: Tensor, slope: Tensor) -> tuple[Tensor, Tensor]:
    """``x = y`` for ``y ≥ 0``, ``y / slope`` otherwise; ``log|det| = -Σ_{y_i < 0} log slope_i``."""
    neg = y < 0
    x = torch.where(neg, y / slope, y)
    ld = -torch.where(neg, torch.log(slope), torch.zeros_like(slope)).sum(-1)
    return x, torch.broadcast_to(ld, x.shape[:-1])


# --------------------------------------------------------------------------------------------------- sigmoid / tanh


def _open_unit_bounds(dtype: torch.dtype) -> tuple[float, float]:
    info = torch.finfo(dtype)
    return info.tiny, 1.0 - info.eps / 2  # smallest positive normal, largest number below 1


def sigmoid_forward(x: Tensor) -> tuple[Tensor, Tensor]:
    """``y = σ(x) = 1 / (1 + e^{-x})``; ``log σ'(x) = -softplus(-x) - softplus(x)``.

    The output is clamped into the open interval ``(0, 1)`` (representable numbers), so that far inputs give an
    output whose inverse is finite; the log-det uses the stable formula and stays finite for any ``x``.
    """
    lo, hi = _open_unit_bounds(x.dtype)
    y = torch.sigmoid(x).clamp(lo, hi)
    return y, (-F.softplus(-x) - F.softplus(x)).sum(-1)


def sigmoid_inverse(y: Tensor) -> tuple[Tensor, Tensor]:
    """``x = logit(y) = log y - log(1 - y)``; ``log|det ∂x/∂y| = -Σ (log y + log(1 - y))``.

    ``y`` is clamped into ``(0, 1)`` first (validate it before calling to reject values outside).
    """
    lo, hi = _open_unit_bounds(y.dtype)
    y = y.clamp(lo, hi)
    log_y, log_1my = torch.log(y), torch.log1p(-y)
    return log_y - log_1my, -(log_y + log_1my).sum(-1)


def tanh_forward(x: Tensor) -> tuple[Tensor, Tensor]:
    """``y = tanh(x)``; ``log tanh'(x) = 2 (log 2 - x - softplus(-2x))`` (stable for any ``x``).

    The output is clamped into the open interval ``(-1, 1)`` so that far inputs have a finite inverse.
    """
    _, hi = _open_unit_bounds(x.dtype)
    y = torch.tanh(x).clamp(-hi, hi)
    ld = 2.0 * (torch.log(x.new_tensor(2.0)) - x - F.softplus(-2.0 * x))
    return y, ld.sum(-1)


def tanh_inverse(y: Tensor) -> tuple[Tensor, Tensor]:
    """``x = atanh(y) = (log(1 + y) - log(1 - y)) / 2``; ``log|det ∂x/∂y| = -Σ (log(1 + y) + log(1 - y))``.

    ``y`` is clamped into ``(-1, 1)`` first (validate it before calling to reject values outside).
    """
    _, hi = _open_unit_bounds(y.dtype)
    y = y.clamp(-hi, hi)
    lp, lm = torch.log1p(y), torch.log1p(-y)
    return 0.5 * (lp - lm), -(lp + lm).sum(-1)
