"""Sylvester flow ``y = x + Q R tanh(R̃ Qᵀx + b)`` (van den Berg et al. 2018, "Sylvester Normalizing Flows for
Variational Inference").

``Q`` is ``D×M`` with orthonormal columns, ``R`` and ``R̃`` are upper triangular ``M×M`` and ``b ∈ R^M``. By
Sylvester's determinant identity ``det(I_D + Q R diag(h') R̃ Qᵀ) = det(I_M + diag(h') R̃ R)``, and ``R̃ R`` is
upper triangular, so ``log|det ∂y/∂x| = Σ_i log|1 + r_ii r̃_ii tanh'(a_i)|`` with ``a = R̃ Qᵀx + b``. The map is
invertible when ``r_ii r̃_ii > -1`` (the paper's theorem 2 with ``sup tanh' = 1``); :func:`sylvester_diag` gives the
paper's choice ``r_ii = tanh(raw)``, ``r̃_ii = tanh(raw̃)``, so ``|r_ii r̃_ii| < 1``.

Inverse (exact, any ``y``): ``Qᵀy = v + R tanh(R̃ v + b)`` with ``v = Qᵀx`` (the orthogonal complement of the span
of ``Q`` passes unchanged). The system is upper triangular: component ``k`` depends only on ``v_k, …, v_M``, so
solving from last to first leaves one scalar increasing equation per component,
``v_k + r_kk tanh(r̃_kk v_k + c_k) = t_k``, solved by bracketed bisection on ``[t_k - |r_kk|, t_k + |r_kk|]`` and one
differentiable Newton step; then ``x = y - Q R tanh(R̃ v + b)``.

Orthonormal ``Q``: :func:`householder_product` (product of Householder reflections, formed without a loop by the
UT transform) or :func:`orthonormal_columns` (sign-fixed reduced QR of a free ``D×M`` matrix).
"""

from __future__ import annotations

import torch

from .root import bisect_increasing, newton_polish

Tensor = torch.Tensor


def _tiny(t: Tensor) -> float:
    return torch.finfo(t.dtype).tiny


def sylvester_diag(raw: Tensor) -> Tensor:
    """Diagonal of ``R`` or ``R̃`` from raw values: ``tanh(raw) ∈ (-1, 1)``, so ``r_ii r̃_ii > -1``.

    Example:
        >>> bool((sylvester_diag(torch.randn(4)) * sylvester_diag(torch.randn(4)) > -1).all())
        True

    Reference: van den Berg et al. 2018, section 4 (the diagonal activation of their experiments).
    """
    return torch.tanh(raw)


def upper_triangular(diag: Tensor, upper: Tensor | None, index: Tensor | None) -> Tensor:
    """Upper-triangular ``(..., M, M)`` matrix with diagonal ``diag`` ``(..., M)`` and strictly-upper entries
    ``upper`` ``(..., M(M-1)/2)`` placed at flat positions ``index`` (row-major, e.g. from ``torch.triu_indices``).

    Example:
        >>> i = torch.triu_indices(3, 3, 1); idx = i[0] * 3 + i[1]
        >>> upper_triangular(torch.ones(3), torch.arange(3.0), idx).shape
        torch.Size([3, 3])
    """
    m = diag.shape[-1]
    mat = torch.diag_embed(diag)
    if upper is None or m < 2:
        return mat
    batch = torch.broadcast_shapes(diag.shape[:-1], upper.shape[:-1])
    flat = upper.new_zeros(batch + (m * m,)).index_copy(-1, index, upper.expand(batch + upper.shape[-1:]))
    return mat + flat.reshape(batch + (m, m))


def householder_product(v: Tensor) -> Tensor:
    """``Q = H_1 H_2 … H_K`` with ``H_k = I - 2 v_k v_kᵀ / ‖v_k‖²`` for rows ``v_k`` of ``v`` ``(..., K, D)``.

    Formed without a loop by the UT transform (Joffrain et al. 2006): ``Q = I - Vᵀ S⁻¹ V`` with ``S`` upper triangular,
    ``S_ij = v_iᵀ v_j`` for ``i < j`` and ``S_ii = ‖v_i‖²/2``. The result is an orthogonal ``D×D`` matrix.

    Example:
        >>> q = householder_product(torch.randn(4, 4))
        >>> torch.allclose(q.T @ q, torch.eye(4), atol=1e-5)
        True

    Reference: Tomczak & Welling 2016 (Householder flows); van den Berg et al. 2018 (Householder Sylvester flows).
    """
    d = v.shape[-1]
    gram = v @ v.transpose(-1, -2)
    half_diag = (0.5 * torch.diagonal(gram, dim1=-2, dim2=-1)).clamp_min(_tiny(v))
    s = torch.triu(gram, 1) + torch.diag_embed(half_diag)
    w = torch.linalg.solve_triangular(s, v, upper=True)
    eye = torch.eye(d, dtype=v.dtype, device=v.device)
    return eye - v.transpose(-1, -2) @ w


def orthonormal_columns(a: Tensor) -> Tensor:
    """``D×M`` matrix with orthonormal columns spanning those of ``a`` ``(..., D, M)``, ``M ≤ D``.

    The reduced QR factor with its column signs fixed so that ``R`` has a non-negative diagonal: the unique, smooth
    Gram-Schmidt orthonormalisation of the columns of ``a`` (full column rank assumed).

    Example:
        >>> q = orthonormal_columns(torch.randn(5, 3))
        >>> torch.allclose(q.T @ q, torch.eye(3), atol=1e-5)
        True
    """
    q, r = torch.linalg.qr(a, mode="reduced")
    d = torch.diagonal(r, dim1=-2, dim2=-1)
    sign = torch.where(d < 0, -torch.ones_like(d), torch.ones_like(d))
    return q * sign.unsqueeze(-2)


def _log_det_terms(h: Tensor, p: Tensor) -> Tensor:
    """``log(1 + p_i tanh'(a_i))`` with ``h = tanh(a)`` and ``p = diag(R) diag(R̃)``."""
    return torch.log((1.0 + p * (1.0 - h * h)).clamp_min(_tiny(h)))


def _vecmat(v: Tensor, m: Tensor) -> Tensor:
    """``v @ m`` for ``v`` ``(..., A)`` and ``m`` ``(..., A, B)`` with broadcast batch shapes."""
    return (v.unsqueeze(-2) @ m).squeeze(-2)


def sylvester_forward(x: Tensor, q: Tensor, r: Tensor, r_tilde: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Sylvester map ``y = x + Q R tanh(R̃ Qᵀx + b)`` and ``log|det ∂y/∂x| = Σ_i log|1 + r_ii r̃_ii tanh'(a_i)|``.

    Args:
        x: inputs ``(..., D)``.
        q: ``(..., D, M)`` with orthonormal columns.
        r, r_tilde: upper-triangular ``(..., M, M)`` with ``r_ii r̃_ii > -1``.
        b: ``(..., M)``.

    Returns:
        ``(y, log_det)``.

    Example:
        >>> q = householder_product(torch.randn(3, 3)); r = torch.triu(torch.randn(3, 3)) * 0.5
        >>> y, ld = sylvester_forward(torch.randn(10, 3), q, r, r, torch.zeros(3))

    Reference: van den Berg et al. 2018, eq. (12)-(13) and theorem 2.
    """
    z = _vecmat(x, q)
    a = _vecmat(z, r_tilde.transpose(-1, -2)) + b
    h = torch.tanh(a)
    y = x + _vecmat(_vecmat(h, r.transpose(-1, -2)), q.transpose(-1, -2))
    p = torch.diagonal(r, dim1=-2, dim2=-1) * torch.diagonal(r_tilde, dim1=-2, dim2=-1)
    return y, _log_det_terms(h, p).sum(-1)


def sylvester_inverse(y: Tensor, q: Tensor, r: Tensor, r_tilde: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Exact inverse of :func:`sylvester_forward` for any ``y``, and ``log|det ∂x/∂y|``.

    Solves the upper-triangular system ``v + R tanh(R̃ v + b) = Qᵀy`` from the last component to the first, each a
    scalar increasing equation (bisection plus one differentiable Newton step, so gradients follow the implicit
    function theorem), then ``x = y - Q R tanh(R̃ v + b)``. A Python loop over ``M`` (slow direction only).

    Args:
        y: outputs ``(..., D)``.
        q, r, r_tilde, b: as in :func:`sylvester_forward`.

    Returns:
        ``(x, log_det)`` with ``log_det`` minus the forward log-determinant at ``x``.

    Example:
        >>> q = householder_product(torch.randn(3, 3)); r = torch.triu(torch.randn(3, 3)) * 0.5
        >>> x, ld = sylvester_inverse(torch.randn(10, 3), q, r, r, torch.zeros(3))

    Reference: van den Berg et al. 2018 (the map); the triangular back-substitution follows from theorem 2's proof.
    """
    m = r.shape[-1]
    z = _vecmat(y, q)
    vs: list[Tensor] = [z[..., 0]] * m
    hs: list[Tensor] = [z[..., 0]] * m
    for k in range(m - 1, -1, -1):
        c = b[..., k]
        t = z[..., k]
        if k < m - 1:
            v_after = torch.stack(vs[k + 1 :], -1)
            h_after = torch.stack(hs[k + 1 :], -1)
            c = c + (r_tilde[..., k, k + 1 :] * v_after).sum(-1)
            t = t - (r[..., k, k + 1 :] * h_after).sum(-1)
        rkk = r[..., k, k]
        rtkk = r_tilde[..., k, k]
        c_d, rkk_d, rtkk_d = c.detach(), rkk.detach(), rtkk.detach()

        def fn(v: Tensor, c_d: Tensor = c_d, rkk_d: Tensor = rkk_d, rtkk_d: Tensor = rtkk_d) -> Tensor:
            return v + rkk_d * torch.tanh(rtkk_d * v + c_d)

        def fn_and_deriv(
            v: Tensor, c: Tensor = c, rkk: Tensor = rkk, rtkk: Tensor = rtkk
        ) -> tuple[Tensor, Tensor]:
            h = torch.tanh(rtkk * v + c)
            deriv = (1.0 + rkk * rtkk * (1.0 - h * h)).clamp_min(_tiny(h))
            return v + rkk * h, deriv

        half = rkk_d.abs()
        v0 = bisect_increasing(fn, t, t - half, t + half)
        v = newton_polish(fn_and_deriv, v0, t)
        vs[k] = v
        hs[k] = torch.tanh(rtkk * v + c)
    h = torch.stack(hs, -1)
    x = y - _vecmat(_vecmat(h, r.transpose(-1, -2)), q.transpose(-1, -2))
    p = torch.diagonal(r, dim1=-2, dim2=-1) * torch.diagonal(r_tilde, dim1=-2, dim2=-1)
    return x, -_log_det_terms(h, p).sum(-1)
