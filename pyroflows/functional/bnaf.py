"""Block neural autoregressive flow (De Cao, Titov & Aziz 2019, "Block Neural Autoregressive Flow").

The map is a neural network ``f(x) = W_L σ(W_{L-1} … σ(W_1 x + b_1 + C c) …) + b_L`` whose weight matrices are
*block lower-triangular*: with ``D`` inputs and ``a_l`` units per dimension in layer ``l`` (``a_0 = a_L = 1``),
``W_l`` has ``D × D`` blocks of shape ``(a_l, a_{l-1})``; upper blocks are zero, strictly-lower blocks are free and
diagonal blocks have positive entries. Each row is weight-normalised as in the paper (eq. 9),
``W_r = exp(s_r) v_r / ‖v_r‖`` with ``v_r`` holding ``exp(raw)`` on the diagonal block and ``raw`` below it. With
strictly increasing activations ``σ`` the output ``y_i`` depends on ``x_{≤i}`` only and ``∂y_i/∂x_i > 0``.
An optional context ``c`` is added (through an unmasked ``C``) to the first layer's pre-activations.

Log-determinant. The Jacobian is triangular, so ``log|det| = Σ_i log ∂y_i/∂x_i``, and ``∂y_i/∂x_i`` is the product
of the ``i``-th diagonal blocks and the activation derivatives. It is propagated in log space (eq. 11 of the paper):
``log J_l[i] = logsumexp_k(log W_l[i, :, k] + log J_{l-1}[i, k]) (+ log σ'(u_l[i]))``; every term is positive, so
this never forms the full Jacobian nor subtracts.

Residual (paper §3.3): ``"normal"`` ``y = x + f(x)``, ``"gated"`` ``y = sigmoid(g) x + (1 - sigmoid(g)) f(x)``.
Without a residual we use ``y = f(x) + LEAK · x``: a tanh network alone has a bounded range, the leak makes the map
onto ``R^D`` (so every ``y`` has an inverse) and bounds ``∂y_i/∂x_i`` below by ``LEAK``.

Inverse. The map is triangular and increasing in ``x_i`` given ``x_{<i}``, so it is inverted coordinate by
coordinate, ``i = 0 … D-1``: each step is a scalar monotone equation solved by bracketed bisection (batched over the
batch) on the small network of the ``i``-th diagonal blocks, with the contributions of ``x_{<i}`` as fixed offsets.
A final Newton step ``x ← x - J⁻¹ (f(x) - y)`` through the full forward, with the (triangular) Jacobian ``J``
detached, makes the gradients of the inverse those of the implicit-function theorem, ``dx = J⁻¹ (dy - ∂f/∂θ dθ)``.
(An elementwise Newton step would miss the off-diagonal terms.) Pyro's and NumPyro's BNAF have no inverse.

Layers are passed as a sequence of ``(weight, log_diag, bias)`` from :func:`masked_block_weight`; hidden layers are
followed by the activation, the last one is linear.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .root import bisect_increasing, default_tol

Tensor = torch.Tensor
Layer = tuple[Tensor, Tensor, Tensor]

#: slope of the linear term added when there is no residual connection (makes the map onto R^D).
LEAK = 1e-2
#: slope of the linear part of ``leaky_tanh``: ``σ(u) = tanh(u) + LEAKY_TANH_SLOPE · u``.
LEAKY_TANH_SLOPE = 0.1
ACTIVATIONS = ("tanh", "leaky_tanh")
RESIDUALS = (None, "normal", "gated")

_LOG4 = math.log(4.0)


def block_masks(dim: int, a_out: int, a_in: int) -> tuple[Tensor, Tensor]:
    """Boolean masks ``(dim·a_out, dim·a_in)`` of the diagonal blocks and of the strictly-lower blocks.

    Example:
        >>> diag, lower = block_masks(3, 2, 1)
        >>> diag.shape, int(lower.sum())
        (torch.Size([6, 3]), 6)
    """
    rows = torch.arange(dim).repeat_interleave(a_out)
    cols = torch.arange(dim).repeat_interleave(a_in)
    return rows[:, None] == cols[None, :], rows[:, None] > cols[None, :]


def masked_block_weight(
    raw: Tensor, log_scale: Tensor, diag_mask: Tensor, lower_mask: Tensor, dim: int
) -> tuple[Tensor, Tensor]:
    """A weight-normalised block lower-triangular matrix with positive diagonal blocks (paper eq. 9).

    ``v = exp(raw)`` on the diagonal blocks, ``raw`` on the strictly-lower blocks, ``0`` above; each row is rescaled
    to norm ``exp(log_scale)``: ``W_r = exp(log_scale_r) v_r / ‖v_r‖``.

    Args:
        raw: unconstrained entries ``(dim·a_out, dim·a_in)`` (those above the diagonal blocks are ignored).
        log_scale: log row norms ``(dim·a_out,)``.
        diag_mask, lower_mask: from :func:`block_masks`.
        dim: the number of blocks ``D``.

    Returns:
        ``(W, log_diag)``: the dense masked matrix and the logs of its diagonal blocks, shape ``(D, a_out, a_in)``.

    Example:
        >>> diag, lower = block_masks(2, 3, 1)
        >>> w, ld = masked_block_weight(torch.randn(6, 2), torch.zeros(6), diag, lower, 2)
        >>> ld.shape
        torch.Size([2, 3, 1])
    """
    rows, cols = raw.shape
    a_out, a_in = rows // dim, cols // dim
    # exp only of the diagonal entries: an exp of a large lower entry would give inf and a NaN gradient in where()
    v = torch.where(diag_mask, raw.masked_fill(~diag_mask, 0.0).exp(), raw.masked_fill(~lower_mask, 0.0))
    log_norm = 0.5 * torch.log((v * v).sum(-1))
    w = torch.exp(log_scale - log_norm).unsqueeze(-1) * v
    raw_diag = raw.reshape(dim, a_out, dim, a_in).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    log_diag = raw_diag + (log_scale - log_norm).reshape(dim, a_out, 1)
    return w, log_diag


def _log_sech2(u: Tensor) -> Tensor:
    """``log(1 - tanh(u)²) = log 4 - 2|u| - 2 softplus(-2|u|)``, finite for any ``u``."""
    au = u.abs()
    return _LOG4 - 2.0 * au - 2.0 * F.softplus(-2.0 * au)


def activation(u: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """A strictly increasing activation and its log-derivative, elementwise.

    ``"tanh"``: ``σ(u) = tanh(u)``, ``log σ' = log(1 - tanh²u)``; ``"leaky_tanh"``: ``σ(u) = tanh(u) + α u`` with
    ``α = LEAKY_TANH_SLOPE``, ``log σ' = logaddexp(log(1 - tanh²u), log α)``.

    Example:
        >>> h, ld = activation(torch.linspace(-3, 3, 5), "tanh")
    """
    if name == "tanh":
        return torch.tanh(u), _log_sech2(u)
    if name == "leaky_tanh":
        log_slope = u.new_tensor(LEAKY_TANH_SLOPE).log()
        return torch.tanh(u) + LEAKY_TANH_SLOPE * u, torch.logaddexp(_log_sech2(u), log_slope)
    raise ValueError(f"unknown BNAF activation {name!r}; choose one of {ACTIVATIONS}")


def _activation_value(u: Tensor, name: str) -> Tensor:
    t = torch.tanh(u)
    return t + LEAKY_TANH_SLOPE * u if name == "leaky_tanh" else t


def _residual(x: Tensor, f: Tensor, residual: str | None, gate: Tensor | None) -> Tensor:
    if residual is None:
        return f + LEAK * x
    if residual == "normal":
        return x + f
    s = torch.sigmoid(gate)
    return s * x + (1.0 - s) * f


def _residual_log_deriv(log_df: Tensor, residual: str | None, gate: Tensor | None) -> Tensor:
    if residual is None:
        return torch.logaddexp(log_df, log_df.new_tensor(LEAK).log())
    if residual == "normal":
        return F.softplus(log_df)
    return torch.logaddexp(F.logsigmoid(gate), F.logsigmoid(-gate) + log_df)


def _check(act: str, residual: str | None, gate: Tensor | None) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown BNAF activation {act!r}; choose one of {ACTIVATIONS}")
    if residual not in RESIDUALS:
        raise ValueError(f"unknown BNAF residual {residual!r}; choose one of {RESIDUALS}")
    if residual == "gated" and gate is None:
        raise ValueError("a gated residual needs a gate tensor of shape (D,)")


def bnaf_forward(
    x: Tensor,
    layers: Sequence[Layer],
    act: str = "tanh",
    residual: str | None = None,
    gate: Tensor | None = None,
    context_shift: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``y = f(x)`` of a BNAF and the elementwise ``log ∂y_i/∂x_i`` (diagonal of the triangular Jacobian).

    Args:
        x: inputs ``(..., D)``.
        layers: ``(W, log_diag, b)`` per masked layer (:func:`masked_block_weight`); activations between them.
        act: ``"tanh"`` or ``"leaky_tanh"``.
        residual: ``None`` (``y = f + LEAK x``), ``"normal"`` or ``"gated"``.
        gate: raw gate ``(D,)`` for the gated residual.
        context_shift: ``(..., D·a_1)`` added to the first pre-activations (``C c``); broadcasts against ``x``.

    Returns:
        ``(y, log_diag_jac)``, both ``(..., D)`` (broadcast batch shape); ``log|det ∂y/∂x|`` is the sum of the latter.

    Example:
        >>> diag, lower = block_masks(2, 4, 1)
        >>> l1 = (*masked_block_weight(torch.randn(8, 2), torch.zeros(8), diag, lower, 2), torch.zeros(8))
        >>> diag, lower = block_masks(2, 1, 4)
        >>> l2 = (*masked_block_weight(torch.randn(2, 8), torch.zeros(2), diag, lower, 2), torch.zeros(2))
        >>> y, ld = bnaf_forward(torch.randn(5, 2), [l1, l2])

    Reference: De Cao, Titov & Aziz 2019, eqs. (8)-(11).
    """
    _check(act, residual, gate)
    dim = x.shape[-1]
    h, log_j = x, None
    last = len(layers) - 1
    for idx, (w, log_diag, b) in enumerate(layers):
        u = F.linear(h, w, b)
        if idx == 0 and context_shift is not None:
            u = u + context_shift
        if log_j is None:  # first layer: a_in = 1
            log_j = log_diag[..., 0]
        else:
            log_j = torch.logsumexp(log_diag + log_j.unsqueeze(-2), dim=-1)
        if idx < last:
            h, log_act = activation(u, act)
            log_j = log_j + log_act.unflatten(-1, (dim, -1))
        else:
            h = u
    log_df = log_j.squeeze(-1).expand(h.shape)
    return _residual(x, h, residual, gate), _residual_log_deriv(log_df, residual, gate)


def bnaf_jacobian(
    x: Tensor,
    layers: Sequence[Layer],
    act: str = "tanh",
    residual: str | None = None,
    gate: Tensor | None = None,
    context_shift: Tensor | None = None,
) -> Tensor:
    """The full (lower-triangular) Jacobian ``∂y/∂x`` of :func:`bnaf_forward`, shape ``(..., D, D)``.

    Propagated densely layer by layer, ``J_l = diag(σ'(u_l)) W_l J_{l-1}``; used by the inverse's Newton step.

    Example:
        >>> diag, lower = block_masks(2, 4, 1)
        >>> l1 = (*masked_block_weight(torch.randn(8, 2), torch.zeros(8), diag, lower, 2), torch.zeros(8))
        >>> diag, lower = block_masks(2, 1, 4)
        >>> l2 = (*masked_block_weight(torch.randn(2, 8), torch.zeros(2), diag, lower, 2), torch.zeros(2))
        >>> bnaf_jacobian(torch.randn(5, 2), [l1, l2]).shape
        torch.Size([5, 2, 2])
    """
    _check(act, residual, gate)
    dim = x.shape[-1]
    h, jac = x, None
    last = len(layers) - 1
    for idx, (w, _, b) in enumerate(layers):
        u = F.linear(h, w, b)
        if idx == 0 and context_shift is not None:
            u = u + context_shift
        jac = w if jac is None else w @ jac
        if idx < last:
            h, log_act = activation(u, act)
            jac = log_act.exp().unsqueeze(-1) * jac
        else:
            h = u
    jac = jac.expand(h.shape + (dim,))
    eye = torch.eye(dim, dtype=x.dtype, device=x.device)
    if residual is None:
        return jac + LEAK * eye
    if residual == "normal":
        return jac + eye
    s = torch.sigmoid(gate).unsqueeze(-1)
    return s * eye + (1.0 - s) * jac


def _layer_inputs(x: Tensor, layers: Sequence[Layer], act: str, context_shift: Tensor | None) -> list[Tensor]:
    """The input of every layer: ``[x, h_1, …, h_{L-1}]``."""
    out, h = [x], x
    for idx, (w, _, b) in enumerate(layers[:-1]):
        u = F.linear(h, w, b)
        if idx == 0 and context_shift is not None:
            u = u + context_shift
        h = _activation_value(u, act)
        out.append(h)
    return out


def bnaf_inverse(
    y: Tensor,
    layers: Sequence[Layer],
    act: str = "tanh",
    residual: str | None = None,
    gate: Tensor | None = None,
    context_shift: Tensor | None = None,
    tol: float | None = None,
) -> tuple[Tensor, Tensor]:
    """``x = f⁻¹(y)`` of a BNAF for any ``y`` and the elementwise ``log ∂x_i/∂y_i = -log ∂y_i/∂x_i``.

    Solves ``y_i = f_i(x_{<i}, x_i)`` for ``i = 0 … D-1`` by bracketed bisection on the scalar network of the
    ``i``-th diagonal blocks, then takes one differentiable Newton step ``x - J⁻¹ (f(x) - y)`` (``J`` detached,
    triangular) so that gradients w.r.t. ``y``, the layers and the context follow the implicit-function theorem.

    Args:
        y: outputs ``(..., D)``.
        layers, act, residual, gate, context_shift: as in :func:`bnaf_forward`.
        tol: bisection tolerance on ``x`` (default :func:`~pyroflows.functional.root.default_tol`).

    Returns:
        ``(x, log_diag_jac_inverse)``, both of the broadcast batch shape ``(..., D)``.

    Example:
        >>> diag, lower = block_masks(2, 4, 1)
        >>> l1 = (*masked_block_weight(torch.randn(8, 2), torch.zeros(8), diag, lower, 2), torch.zeros(8))
        >>> diag, lower = block_masks(2, 1, 4)
        >>> l2 = (*masked_block_weight(torch.randn(2, 8), torch.zeros(2), diag, lower, 2), torch.zeros(2))
        >>> x = torch.randn(5, 2)
        >>> x2, _ = bnaf_inverse(bnaf_forward(x, [l1, l2])[0], [l1, l2])

    Reference: De Cao, Titov & Aziz 2019 (forward map); the inverse is ours.
    """
    _check(act, residual, gate)
    dim = y.shape[-1]
    batch = y.shape[:-1] if context_shift is None else torch.broadcast_shapes(y.shape[:-1], context_shift.shape[:-1])
    y = y.expand(batch + (dim,))
    tol = default_tol(y.dtype) if tol is None else tol
    with torch.no_grad():
        lays = [(w.detach(), None, b.detach()) for w, _, b in layers]
        ctx = None if context_shift is None else context_shift.detach()
        g = None if gate is None else gate.detach()
        yd = y.detach()
        x = yd.new_zeros(yd.shape)
        for i in range(dim):
            inputs = _layer_inputs(x, lays, act, ctx)
            diag_w, offsets = [], []
            for idx, ((w, _, b), h) in enumerate(zip(lays, inputs)):
                a_out, a_in = w.shape[0] // dim, w.shape[1] // dim
                rows = slice(i * a_out, (i + 1) * a_out)
                diag_w.append(w[rows, i * a_in : (i + 1) * a_in])
                off = F.linear(h[..., : i * a_in], w[rows, : i * a_in], b[rows])
                if idx == 0 and ctx is not None:
                    off = off + ctx[..., rows]
                offsets.append(off)
            g_i = None if g is None else g[i]
            last = len(lays) - 1

            def coordinate(t: Tensor, diag_w=diag_w, offsets=offsets, g_i=g_i, last=last) -> Tensor:
                h = t.unsqueeze(-1)
                for idx, (w_ii, off) in enumerate(zip(diag_w, offsets)):
                    u = F.linear(h, w_ii) + off
                    h = _activation_value(u, act) if idx < last else u
                return _residual(t, h.squeeze(-1), residual, g_i)

            target = yd[..., i]
            span = 1.0 + target.abs()
            x[..., i] = bisect_increasing(coordinate, target, -span, span, tol=tol)
        jac = bnaf_jacobian(x, lays, act, residual, g, ctx)
    # differentiable Newton step through the full forward: exact implicit gradients, value refined
    y_star, _ = bnaf_forward(x, layers, act, residual, gate, context_shift)
    step = torch.linalg.solve_triangular(jac, (y_star - y).unsqueeze(-1), upper=False).squeeze(-1)
    x = x - step
    _, log_d = bnaf_forward(x, layers, act, residual, gate, context_shift)
    return x, -log_d
