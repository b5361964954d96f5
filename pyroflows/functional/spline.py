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

and the inverse is the root of a quadratic in ``ξ``, taken on either sign of its linear coefficient in the form that
does not cancel (:func:`_stable_root`).

Speed: :class:`_RQSpline` runs the whole spline as one autograd node with analytic
gradients (the inverse's through the implicit function ``y_k + h R(ξ) = y``), and computes the parameters of the
selected bin on a bins-first ``(P, N)`` layout, which conditioners produce for free (``nn.mlp.params_view``), so
every op runs over a long contiguous axis. ``rqs_forward_reference``/``rqs_inverse_reference`` are the same maps with
the rational-quadratic left to autograd: the tests check the fused kernel against them, and
:func:`use_fused_kernel` switches to them where second derivatives in the input are needed. Second derivatives with
respect to the spline *parameters* are not supported by either.

Numerics: inputs are clamped into the bound before any division, square root or logarithm, the identity tails are
added back without ``where`` (and after the in-bound part, so they add exactly zero inside), and the root is clamped
to ``[0, 1]`` in value only; values and gradients stay finite for inputs far outside the bound.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

Tensor = torch.Tensor

#: floor on each bin's width and height, as a fraction of the interval (widths and heights are computed together)
MIN_BIN_WIDTH = 1e-3
MIN_DERIVATIVE = 1e-3
# softplus(0 + _DERIV_SHIFT) + MIN_DERIVATIVE == 1: raw zeros are the identity.
_DERIV_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))
_LOG2_E = 1.0 / math.log(2.0)


def num_params(count_bins: int) -> int:
    """Number of raw parameters per element for ``count_bins`` bins."""
    return 3 * count_bins - 1


def spline_knots(params: Tensor, bound: float) -> tuple[Tensor, Tensor, Tensor]:
    """Knot abscissae, ordinates and derivatives, each ``(..., K + 1)``, from raw parameters ``(..., 3K - 1)``."""
    k = (params.shape[-1] + 1) // 3
    uwh, ud = params.split([2 * k, k - 1], dim=-1)
    uwh = uwh.unflatten(-1, (2, k))
    e = torch.exp(uwh - uwh.amax(-1, keepdim=True))
    ce = torch.cumsum(e, dim=-1)
    scale = (2 * bound * (1.0 - MIN_BIN_WIDTH * k)) / ce[..., -1:]  # interior knot j = c_j + scale * ce_{j-1}
    knots = torch.addcmul(_knot_offsets(k, bound, params), F.pad(ce[..., :-1], (1, 1)), scale)
    d = F.pad(MIN_DERIVATIVE + F.softplus(ud + _DERIV_SHIFT), (1, 1), value=1.0)
    return knots[..., 0, :], knots[..., 1, :], d


def _knot_offsets(k: int, bound: float, like: Tensor) -> Tensor:
    """``c_j = -bound + 2·bound·m·j`` for ``j < K`` and ``c_K = bound``: the parameter-free part of the knots."""
    c = torch.arange(k + 1, dtype=like.dtype, device=like.device) * (2 * bound * MIN_BIN_WIDTH) - bound
    c[-1] = bound
    return c


class _BinParams(torch.autograd.Function):
    """``(x_k, w_k, y_k, h_k, d_k, d_{k+1})`` of the bin holding each value, with a fused backward to the raw params.

    Takes the raw parameters bins-first, ``(3K - 1, *S)`` for values of shape ``S``, and works on ``(·, N)`` arrays
    (``N`` = number of values) so that every op runs over a long contiguous axis. ``axis`` 0 searches the bins along
    x (forward map), 1 along y (inverse map); ``value`` must lie in the bound.

    Backward: with ``g_L``, ``g_R`` the gradients on the selected bin's left and right knots (only interior knots
    depend on the parameters), ``A = r·g_L`` and ``B = r·g_R``,
    ``∂L/∂u_i = e_i·((A + B)·[i < k] + B·[i = k] - (g_L·(x_k - c_k) + g_R·(x_{k+1} - c_{k+1}))/Σe)``
    for the width (and, in the same way, height) logits, and ``g_d·sigmoid(u + c)`` for the two selected interior
    derivatives.
    """

    @staticmethod
    def forward(ctx, params_t: Tensor, value: Tensor, bound: float, axis: int):  # type: ignore[override]
        outs, saved = _bin_forward(params_t, value.reshape(-1), bound, axis)
        ctx.save_for_backward(*saved)
        ctx.shape, ctx.num_params, ctx.bound = value.shape, params_t.shape[0], bound
        return tuple(t.view(value.shape) for t in outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):  # type: ignore[override]
        g = _bin_backward(ctx.saved_tensors, ctx.bound, torch.stack([t.reshape(-1) for t in grads]))
        return g.view((ctx.num_params,) + ctx.shape), None, None, None


def _constants(k: int, bound: float, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Parameter-free tensors of a spline: the lower-triangular ones ``(K, K)`` (cumulative sums as a matmul, much
    faster than ``cumsum`` along a middle axis on CPU), the interior knot offsets ``c_1..c_{K-1}`` and the two ends.

    Made anew on every call (a few small tensors): a cache would outlive the call, and under ``torch.export`` or
    ``torch.compile`` it would keep the trace's fake tensors for later plain calls."""
    with torch.no_grad():
        tri = torch.ones(k, k, dtype=dtype, device=device).tril_()
        offsets = _knot_offsets(k, bound, tri)[1:-1].view(1, k - 1, 1).contiguous()
        ends = torch.tensor([-bound, bound], dtype=dtype, device=device).view(1, 2, 1)
    return tri, offsets, ends


def _bin_forward(params_t: Tensor, v: Tensor, bound: float, axis: int):
    """Forward of :class:`_BinParams` on flat values ``v`` ``(N,)``: the six bin quantities and what backward needs."""
    p = params_t.shape[0]
    k = (p + 1) // 3
    pt = params_t.reshape(p, -1)  # (P, N), contiguous
    n = pt.shape[1]
    tri, offsets, ends = _constants(k, float(bound), pt.dtype, pt.device)
    uwh = pt[: 2 * k].view(2, k, n)
    # e = exp(u - max u), computed as 2^((u - max u)·log2 e): exp2 is vectorised far better than exp on CPU
    e = ((uwh - uwh.amax(1, keepdim=True)) * _LOG2_E).exp2_()  # (2, K, N)
    ce = torch.matmul(tri, e)  # cumulative sums over the bins
    total = ce[:, -1:]  # (2, 1, N)
    r = (2 * bound * (1.0 - MIN_BIN_WIDTH * k)) / total
    inner_knots = torch.addcmul(offsets, ce[:, :-1], r)  # (2, K - 1, N): knots 1..K-1, rows x and y
    idx = (v >= inner_knots[axis]).sum(0)  # (N,) in 0..K-1
    has = torch.stack([idx > 0, idx < k - 1]).to(pt.dtype)  # (2, N): is the bin's left / right knot interior?
    lr = torch.stack([(idx - 1).clamp(min=0), idx.clamp(max=k - 2)])  # (2, N): their rows in inner_knots
    knots = torch.addcmul(ends, inner_knots.gather(1, lr.unsqueeze(0).expand(2, 2, n)) - ends, has)  # (row, side, N)
    us = pt[2 * k :].gather(0, lr) + _DERIV_SHIFT  # (2, N): raw derivatives at the left / right knot
    dd = torch.addcmul(torch.ones_like(us), F.softplus(us) - (1.0 - MIN_DERIVATIVE), has)
    w, h = knots[0, 1] - knots[0, 0], knots[1, 1] - knots[1, 0]
    outs = (knots[0, 0], w, knots[1, 0], h, dd[0], dd[1])
    return outs, (e, total, r, idx, lr, has, knots, us)


def _bin_backward(saved, bound: float, g6: Tensor) -> Tensor:
    """Gradient ``(P, N)`` of the raw parameters from the gradients ``(6, N)`` of the bin quantities
    ``(x_k, w_k, y_k, h_k, d_k, d_{k+1})`` (see :class:`_BinParams`)."""
    e, total, r, idx, lr, has, knots, us = saved
    k, n = e.shape[1], e.shape[2]
    pairs = g6.view(3, 2, -1)  # ((x0, w), (y0, h), (d0, d1))
    g_r = pairs[:2, 1] * has[1]  # (2 rows, N): on the right knots (interior only)
    g_l = (pairs[:2, 0] - pairs[:2, 1]) * has[0]  # on the left knots
    r = r.squeeze(1)
    # interior knot j is c_j + r·ce_{j-1} with c_j = -bound + 2·bound·m·j, so (knot - c_j) = r·ce_{j-1}
    step = 2 * bound * MIN_BIN_WIDTH
    c_left = idx.to(e.dtype) * step - bound
    term2 = (g_l * (knots[:, 0] - c_left) + g_r * (knots[:, 1] - (c_left + step))) / total.squeeze(1)
    b = (g_r * r).unsqueeze(1)  # (2, 1, N)
    ab = b + (g_l * r).unsqueeze(1)
    # (A + B) on the bins left of the selected one, B on it, 0 right of it: (2, K, N). The masks are built as floats
    # from idx - i (a broadcast torch.where or a float-times-bool product is several times slower on CPU).
    dist = idx.to(e.dtype) - torch.arange(k, device=e.device, dtype=e.dtype).unsqueeze(1)  # (K, N)
    term1 = torch.addcmul(ab * dist.clamp(0, 1), b, (1 - dist.abs()).clamp_(min=0))
    grad = torch.empty(3 * k - 1, n, dtype=e.dtype, device=e.device)
    torch.mul(e, term1 - term2.unsqueeze(1), out=grad[: 2 * k].view(2, k, n))
    g_d = grad[2 * k :].zero_()
    g_d.scatter_add_(0, lr, pairs[2] * torch.sigmoid(us) * has)
    return grad


def _bin_params(params: Tensor, value: Tensor, bound: float, axis: int):
    # bins-first layout (P, *S): free when the conditioner already built its output that way (nn.mlp.params_view),
    # otherwise one transposing copy, which the fast ops on long contiguous rows repay
    value, params = _broadcast(value, params)
    params_t = params.movedim(-1, 0).contiguous()
    return _BinParams.apply(params_t, value.contiguous(), bound, axis)


def _log_deriv(xi: Tensor, s: Tensor, d0: Tensor, d1: Tensor, den: Tensor) -> Tensor:
    omx = 1 - xi
    num = d1 * xi * xi + 2 * s * xi * omx + d0 * omx * omx
    return 2 * torch.log(s) + torch.log(num) - 2 * torch.log(den)


def _stable_root(a: Tensor, b: Tensor, c: Tensor, root: Tensor) -> Tensor:
    """The spline's root ``ξ = 2c / (b + √disc) = (√disc - b) / (2a)`` of ``a ξ² + b ξ - c = 0`` (``√disc`` given),
    taking whichever form has no cancellation: the first for ``b ≥ 0``, the second for ``b < 0`` (where ``a`` is
    then bounded away from zero, since the root lies in ``[0, 1]``)."""
    pos = b >= 0
    num = torch.where(pos, 2 * c, root - b)
    den = torch.where(pos, root + b, 2 * a)
    return num / torch.where(den == 0, torch.ones_like(den), den)


def _clamp_unit(xi: Tensor) -> Tensor:
    """``clamp(ξ, 0, 1)`` in value only: rounding can put the root a hair outside, and a hard clamp would zero its
    gradient exactly at the knots and the bound."""
    return xi + (xi.clamp(0, 1) - xi).detach()


# ------------------------------------------------------------------------------------------------ reference (autograd)
def rqs_forward_reference(x: Tensor, params: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """:func:`rqs_forward` with the rational-quadratic differentiated by autograd (any order in ``x``)."""
    xc = x.clamp(-bound, bound)
    x0, w, y0, h, d0, d1 = _bin_params(params, xc, bound, 0)
    s = h / w
    xi = _clamp_unit((xc - x0) / w)
    t = xi * (1 - xi)
    den = s + (d1 + d0 - 2 * s) * t
    y = y0 + h * (s * xi * xi + d0 * t) / den + (x - xc)  # identity tails: y_in is ±bound at the ends
    ladj = _log_deriv(xi, s, d0, d1, den) * (x == xc).to(x.dtype)
    return y, ladj


def rqs_inverse_reference(y: Tensor, params: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """:func:`rqs_inverse` with the rational-quadratic differentiated by autograd (any order in ``y``)."""
    yc = y.clamp(-bound, bound)
    x0, w, y0, h, d0, d1 = _bin_params(params, yc, bound, 1)
    s = h / w
    dy = yc - y0
    q = d1 + d0 - 2 * s
    a = h * (s - d0) + dy * q
    b = h * d0 - dy * q
    c = -s * dy
    # sqrt of a floor above zero keeps the gradient finite; the value-only clamp keeps dξ/dy at ξ = 1 (the bound)
    root = torch.sqrt((b * b - 4 * a * c).clamp_min(torch.finfo(b.dtype).tiny))
    xi = _clamp_unit(_stable_root(a, b, -c, root))
    x = x0 + xi * w + (y - yc)
    den = s + q * xi * (1 - xi)
    ladj = _log_deriv(xi, s, d0, d1, den) * (y == yc).to(y.dtype)
    return x, ladj


# ------------------------------------------------------------------------------------------------ fused
def _partials(xi: Tensor, t: Tensor, s: Tensor, q: Tensor, d0: Tensor, d1: Tensor, inv_den: Tensor, inv_nd: Tensor):
    """Partial derivatives of ``R = (sξ² + d0 t)/den`` (so that ``y = y_k + h R``) and of the log-derivative
    ``L = 2 log s + log numD - 2 log den`` in ``(ξ, s, d0, d1)``, with ``t = ξ(1 - ξ)``, ``q = d0 + d1 - 2s``,
    ``den = s + q t`` and ``numD = d1 ξ² + 2 s t + d0 (1 - ξ)²``. Returns ``R`` and two ``(4, N)`` stacks of partials
    (order ξ, s, d0, d1)."""
    omx = 1 - xi
    xi2 = xi * xi
    one_m2xi = 1 - 2 * xi
    r = torch.addcmul(d0 * t, s, xi2).mul_(inv_den)
    # R = numY/den: each partial is (∂numY - R ∂den)/den;  L: ∂numD/numD - 2 ∂den/den (+ 2/s for s)
    d_den = torch.stack([q * one_m2xi, 1 - 2 * t, t, t])
    d_num_y = torch.stack([torch.addcmul(d0 * one_m2xi, s, xi, value=2), xi2, t, torch.zeros_like(t)])
    d_num_d = torch.stack([torch.addcmul(torch.addcmul(d1 * xi, s, one_m2xi), d0, omx, value=-1).mul_(2), 2 * t,
                           omx * omx, xi2])
    r_parts = torch.addcmul(d_num_y, r, d_den, value=-1).mul_(inv_den)
    l_parts = torch.addcmul(d_num_d.mul_(inv_nd), d_den, inv_den, value=-2)
    l_parts[1].add_(2 / s)
    return r, r_parts, l_parts


class _RQSpline(torch.autograd.Function):
    """The whole spline in one autograd node: ``(params_t, value) -> (output, forward log-derivative)``.

    ``inverse=False`` maps ``x -> y``; ``inverse=True`` maps ``y -> x`` (the quadratic root) and returns the forward
    log-derivative at that ``x``. Gradients are analytic: through ``ξ = (x - x_k)/w``, ``s = h/w`` for the forward map,
    and through the implicit function ``y_k + h R(ξ) = y`` for the inverse, then into the raw parameters with
    :func:`_bin_backward`. Points outside the bound are the identity and carry no parameter gradient. The forward
    computes only the outputs; the partial derivatives are formed in backward. Written with fused and in-place ops:
    at the sizes of a training batch the cost is mostly per-op overhead.
    """

    @staticmethod
    def forward(ctx, params_t: Tensor, value: Tensor, bound: float, inverse: bool):  # type: ignore[override]
        shape = value.shape
        v = value.reshape(-1)
        vc = v.clamp(-bound, bound)
        (x0, w, y0, h, d0, d1), saved = _bin_forward(params_t, vc, bound, 1 if inverse else 0)
        s = h / w
        q = (d0 + d1).sub_(s, alpha=2)
        if inverse:
            dy = vc - y0
            dyq = dy * q
            a = torch.addcmul(dyq, h, s - d0)
            b = torch.mul(h, d0).sub_(dyq)
            c = s * dy  # minus the constant term of the quadratic
            root = torch.addcmul(b * b, a, c, value=4).clamp_min_(0).sqrt_()
            xi = _stable_root(a, b, c, root).clamp_(0, 1)
            omx = 1 - xi
            t = xi * omx  # not ξ - ξ², which cancels near ξ = 1
            den = torch.addcmul(s, q, t)
            out = torch.addcmul(x0, xi, w).add_(v - vc)  # tail term first: exactly 0 inside the bound
        else:
            xi = torch.sub(vc, x0).div_(w).clamp_(0, 1)
            omx = 1 - xi
            t = xi * omx
            den = torch.addcmul(s, q, t)
            num_y = torch.addcmul(d0 * t, s, xi * xi)
            out = torch.addcmul(y0, h, num_y.div_(den)).add_(v - vc)  # tail term exactly 0 inside the bound
        num_d = torch.addcmul(torch.addcmul(d1 * xi * xi, s, t, value=2), d0, omx * omx)
        inside = (v == vc).to(v.dtype)
        ladj = torch.log(s / den).mul_(2).add_(torch.log(num_d)).mul_(inside)
        ctx.save_for_backward(inside, xi, t, s, q, w, h, d0, d1, den, num_d, *saved)
        ctx.inverse, ctx.shape, ctx.num_params, ctx.bound = inverse, shape, params_t.shape[0], bound
        return out.view(shape), ladj.view(shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_ladj):  # type: ignore[override]
        inside, xi, t, s, q, w, h, d0, d1, den, num_d, *saved = ctx.saved_tensors
        r, r_parts, l_parts = _partials(xi, t, s, q, d0, d1, 1 / den, 1 / num_d)
        g_out = g_out.reshape(-1)
        g_l = g_ladj.reshape(-1) * inside
        if ctx.inverse:
            # x = x_k + ξ w with ξ the root of y_k + h R(ξ, s, d0, d1) = y
            lam = torch.addcmul(g_out * w, g_l, l_parts[0]).div_(h * r_parts[0])
            g = torch.addcmul(l_parts * g_l, r_parts, lam * h, value=-1)  # (ξ, s, d0, d1) rows; row 0 unused
            g_value = torch.where(inside > 0, lam, g_out)
            g_s_w = g[1] / w
            g6 = torch.stack([g_out, torch.addcmul(g_out * xi, g_s_w, s, value=-1), -lam,
                              torch.addcmul(g_s_w, lam, r, value=-1), g[2], g[3]])
        else:
            # y = y_k + h R(ξ, s, d0, d1) with ξ = (x - x_k)/w, s = h/w
            g = torch.addcmul(l_parts * g_l, r_parts, g_out * h)  # (ξ, s, d0, d1)
            g_xi_s_w = g[:2] / w
            g_value = torch.where(inside > 0, g_xi_s_w[0], g_out)
            g6 = torch.stack([-g_xi_s_w[0], torch.addcmul(g_xi_s_w[0] * xi, g_xi_s_w[1], s).neg_(), g_out,
                              torch.addcmul(g_xi_s_w[1], g_out, r), g[2], g[3]])
        g_params = _bin_backward(saved, ctx.bound, g6.mul_(inside))
        return g_params.view((ctx.num_params,) + ctx.shape), g_value.view(ctx.shape), None, None


_FUSED = True


def use_fused_kernel(enabled: bool = True) -> None:
    """Select the fused spline kernel (default: fastest, first derivatives only) or the autograd reference
    (slower; supports higher-order derivatives with respect to the input, e.g. for Hessians)."""
    global _FUSED
    _FUSED = bool(enabled)


def _broadcast(v: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """Values and parameters expanded to one batch shape (either may carry the larger batch, e.g. one input
    scored under a batch of contexts)."""
    shape = torch.broadcast_shapes(v.shape, params.shape[:-1])
    if v.shape != shape:
        v = v.expand(shape)
    if params.shape[:-1] != shape:
        params = params.expand(shape + params.shape[-1:])
    return v, params


def _shared(v: Tensor, params: Tensor) -> bool:
    """Are the parameters shared across the values (fewer of them than the broadcast batch: an elementwise layer)?
    Then the knots are computed once and each value's bin gathered (the reference path; the fused kernel would
    expand the parameters to every value, which is slower at every batch size)."""
    shape = torch.broadcast_shapes(v.shape, params.shape[:-1])
    return params.shape[:-1].numel() < shape.numel()


def _fused(v: Tensor, params: Tensor, bound: float, inverse: bool) -> tuple[Tensor, Tensor]:
    v, params = _broadcast(v, params)
    return _RQSpline.apply(params.movedim(-1, 0).contiguous(), v.contiguous(), bound, inverse)


def rqs_forward(x: Tensor, params: Tensor, bound: float, param_axis: int = -1) -> tuple[Tensor, Tensor]:
    """``y = spline(x)`` and ``log |dy/dx|`` elementwise; ``params`` broadcasts to ``x.shape + (3K - 1,)``.
    ``param_axis=0`` takes the parameters bins-first, ``(3K - 1,) + x.shape``, the kernel's own layout (no copy)."""
    if param_axis not in (-1, params.dim() - 1):
        params = params.movedim(param_axis, -1)
    if _FUSED and not _shared(x, params):
        return _fused(x, params, bound, False)
    return rqs_forward_reference(x, params, bound)


def rqs_inverse(y: Tensor, params: Tensor, bound: float, param_axis: int = -1) -> tuple[Tensor, Tensor]:
    """``x = spline⁻¹(y)`` (closed form) and ``log |dy/dx|`` at ``x`` (the *forward* log-derivative); ``param_axis``
    as in :func:`rqs_forward`."""
    if param_axis not in (-1, params.dim() - 1):
        params = params.movedim(param_axis, -1)
    if _FUSED and not _shared(y, params):
        return _fused(y, params, bound, True)
    return rqs_inverse_reference(y, params, bound)
