"""Block neural autoregressive flow (De Cao, Titov & Aziz 2019, "Block Neural Autoregressive Flow"), in JAX.

The map is a neural network ``f(x) = W_L σ(W_{L-1} … σ(W_1 x + b_1 + C c) …) + b_L`` whose weight matrices are
*block lower-triangular*: with ``D`` inputs and ``a_l`` units per dimension in layer ``l`` (``a_0 = a_L = 1``),
``W_l`` has ``D × D`` blocks of shape ``(a_l, a_{l-1})``; upper blocks are zero, strictly-lower blocks are free and
diagonal blocks have positive entries. Each row is weight-normalised (paper eq. 9),
``W_r = exp(s_r) v_r / ‖v_r‖`` with ``v_r`` holding ``exp(raw)`` on the diagonal block and ``raw`` below it. With
strictly increasing activations ``σ`` the output ``y_i`` depends on ``x_{≤i}`` only and ``∂y_i/∂x_i > 0``.
An optional context shift ``C c`` is added to the first layer's pre-activations.

Log-determinant: the Jacobian is triangular, so ``log|det| = Σ_i log ∂y_i/∂x_i``, and ``∂y_i/∂x_i`` is the product of
the ``i``-th diagonal blocks and the activation derivatives. It is propagated in log space (eq. 11),
``log J_l[i] = logsumexp_k(log W_l[i, :, k] + log J_{l-1}[i, k]) (+ log σ'(u_l[i]))``; every term is positive, so
this never forms the full Jacobian nor subtracts.

Residual (paper §3.3): ``"normal"`` ``y = x + f(x)``, ``"gated"`` ``y = sigmoid(g) x + (1 - sigmoid(g)) f(x)``;
without one, ``y = f(x) + LEAK · x``: a tanh network alone has a bounded range, the leak makes the map onto ``R^D`` (so
every ``y`` has an inverse) and bounds ``∂y_i/∂x_i`` below by ``LEAK``.

Inverse: coordinate by coordinate (a ``lax.fori_loop`` over ``i``: one compiled solve for any ``D``), each a scalar
monotone bisection on the network of the ``i``-th diagonal blocks with the contributions of ``x_{<i}`` as fixed
offsets (values only), then one Newton step ``x ← x - J⁻¹ (f(x) - y)`` through the full forward with the triangular
Jacobian ``J`` held constant, so that derivatives follow the implicit-function theorem,
``dx = J⁻¹ (dy - ∂f/∂θ dθ)`` (an elementwise Newton step would miss the off-diagonal terms). The paper gives no
inverse; this one is the package's own. Everything is jit- and vmap-compatible.

Layers are passed as a sequence of ``(weight, log_diag, bias)`` from :func:`masked_block_weight`; hidden layers are
followed by the activation, the last one is linear. Formulas, constants and weight layouts are those of
``pyroflows.functional.bnaf``, so weights move between the packages unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import solve_triangular

from .root import bisect_increasing, default_tol

Array = jax.Array
Layer = tuple[Array, Array, Array]

#: slope of the linear term added when there is no residual connection (makes the map onto R^D).
LEAK = 1e-2
#: slope of the linear part of ``leaky_tanh``: ``σ(u) = tanh(u) + LEAKY_TANH_SLOPE · u``.
LEAKY_TANH_SLOPE = 0.1
ACTIVATIONS = ("tanh", "leaky_tanh")
RESIDUALS = (None, "normal", "gated")

_LOG4 = math.log(4.0)
_SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus returns x itself above this


def _softplus(x: Array) -> Array:
    """``log(1 + e^x)``, and ``x`` itself above 20 (as ``torch.nn.functional.softplus``, so values match pyroflows
    to rounding), written with ``where`` so that neither branch overflows."""
    return jnp.where(x > _SOFTPLUS_THRESHOLD, x, jnp.log1p(jnp.exp(jnp.where(x > _SOFTPLUS_THRESHOLD, 0.0, x))))


def block_masks(dim: int, a_out: int, a_in: int) -> tuple[Array, Array]:
    """Boolean masks ``(dim·a_out, dim·a_in)`` of the diagonal blocks and of the strictly-lower blocks.

    A layer with ``a_in`` units per dimension in and ``a_out`` out has ``dim × dim`` blocks of shape
    ``(a_out, a_in)``; block ``(i, j)`` is diagonal for ``i = j`` and strictly lower for ``i > j``. The masks are
    built with NumPy from static sizes, so the function may be called inside ``jax.jit``.

    Example:
        >>> diag, lower = block_masks(3, 2, 1)
        >>> diag.shape, int(lower.sum())
        ((6, 3), 6)
    """
    rows = np.repeat(np.arange(dim), a_out)
    cols = np.repeat(np.arange(dim), a_in)
    return jnp.asarray(rows[:, None] == cols[None, :]), jnp.asarray(rows[:, None] > cols[None, :])


def masked_block_weight(
    raw: Array, log_scale: Array, diag_mask: Array, lower_mask: Array, dim: int
) -> tuple[Array, Array]:
    """A weight-normalised block lower-triangular matrix with positive diagonal blocks (paper eq. 9).

    ``v = exp(raw)`` on the diagonal blocks, ``raw`` on the strictly-lower blocks, ``0`` above; each row is rescaled
    to norm ``exp(log_scale)``: ``W_r = exp(log_scale_r) v_r / ‖v_r‖``. The log-diagonal is computed from ``raw``
    and ``log_scale`` directly (never as ``log W``), so it is exact even where an entry of ``W`` underflows.

    Args:
        raw: unconstrained entries ``(dim·a_out, dim·a_in)`` (those above the diagonal blocks are ignored).
        log_scale: log row norms ``(dim·a_out,)``.
        diag_mask, lower_mask: from :func:`block_masks`.
        dim: the number of blocks ``D``.

    Returns:
        ``(W, log_diag)``: the dense masked matrix and the logs of its diagonal blocks, shape ``(D, a_out, a_in)``.
    """
    rows, cols = raw.shape
    a_out, a_in = rows // dim, cols // dim
    # exp only of the diagonal entries: an exp of a large lower entry would give inf and a NaN gradient in where()
    zero = jnp.zeros_like(raw)
    v = jnp.where(diag_mask, jnp.exp(jnp.where(diag_mask, raw, zero)), jnp.where(lower_mask, raw, zero))
    log_norm = 0.5 * jnp.log((v * v).sum(-1))
    w = jnp.exp(log_scale - log_norm)[:, None] * v
    raw_diag = jnp.diagonal(raw.reshape(dim, a_out, dim, a_in), axis1=0, axis2=2).transpose(2, 0, 1)
    log_diag = raw_diag + (log_scale - log_norm).reshape(dim, a_out, 1)
    return w, log_diag


def _log_sech2(u: Array) -> Array:
    """``log(1 - tanh(u)²) = log 4 - 2|u| - 2 softplus(-2|u|)``, finite for any ``u``."""
    au = jnp.abs(u)
    return _LOG4 - 2.0 * au - 2.0 * _softplus(-2.0 * au)


def activation(u: Array, name: str) -> tuple[Array, Array]:
    """A strictly increasing activation and its log-derivative, elementwise.

    ``"tanh"``: ``σ(u) = tanh(u)``, ``log σ' = log(1 - tanh²u)``; ``"leaky_tanh"``: ``σ(u) = tanh(u) + α u`` with
    ``α = LEAKY_TANH_SLOPE``, ``log σ' = logaddexp(log(1 - tanh²u), log α)``. ``log(1 - tanh²u)`` is evaluated as
    ``log 4 - 2|u| - 2 softplus(-2|u|)``, finite for any ``u``. Returns ``(σ(u), log σ'(u))``, both of ``u``'s
    shape; an unknown ``name`` raises a ``ValueError`` naming :data:`ACTIVATIONS`.
    """
    if name == "tanh":
        return jnp.tanh(u), _log_sech2(u)
    if name == "leaky_tanh":
        return jnp.tanh(u) + LEAKY_TANH_SLOPE * u, jnp.logaddexp(_log_sech2(u), math.log(LEAKY_TANH_SLOPE))
    raise ValueError(f"unknown BNAF activation {name!r}; choose one of {ACTIVATIONS}")


def _activation_value(u: Array, name: str) -> Array:
    t = jnp.tanh(u)
    return t + LEAKY_TANH_SLOPE * u if name == "leaky_tanh" else t


def _residual(x: Array, f: Array, residual: str | None, gate: Array | None) -> Array:
    if residual is None:
        return f + LEAK * x
    if residual == "normal":
        return x + f
    s = jax.nn.sigmoid(gate)
    return s * x + (1.0 - s) * f


def _residual_log_deriv(log_df: Array, residual: str | None, gate: Array | None) -> Array:
    if residual is None:
        return jnp.logaddexp(log_df, math.log(LEAK))
    if residual == "normal":
        return _softplus(log_df)
    return jnp.logaddexp(jax.nn.log_sigmoid(gate), jax.nn.log_sigmoid(-gate) + log_df)


def _check(act: str, residual: str | None, gate: Array | None) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown BNAF activation {act!r}; choose one of {ACTIVATIONS}")
    if residual not in RESIDUALS:
        raise ValueError(f"unknown BNAF residual {residual!r}; choose one of {RESIDUALS}")
    if residual == "gated" and gate is None:
        raise ValueError("a gated residual needs a gate array of shape (D,)")


def _linear(h: Array, w: Array, b: Array | None = None) -> Array:
    """``torch.nn.functional.linear``: ``h Wᵀ + b``."""
    u = h @ w.T
    return u if b is None else u + b


def bnaf_forward(
    x: Array,
    layers: Sequence[Layer],
    act: str = "tanh",
    residual: str | None = None,
    gate: Array | None = None,
    context_shift: Array | None = None,
) -> tuple[Array, Array]:
    """``y = f(x)`` of a BNAF and the elementwise ``log ∂y_i/∂x_i`` (diagonal of the triangular Jacobian).

    The block-masked network of De Cao, Titov & Aziz (2019), eqs. (8)-(11), with the log-diagonal propagated in log
    space through the layers and the residual (module docstring). Pure; jit-, vmap- and grad-compatible.

    Args:
        x: inputs ``(..., D)``.
        layers: ``(W, log_diag, b)`` per masked layer (:func:`masked_block_weight`); activations between them.
        act: ``"tanh"`` or ``"leaky_tanh"``.
        residual: ``None`` (``y = f + LEAK x``), ``"normal"`` or ``"gated"``.
        gate: raw gate ``(D,)`` for the gated residual.
        context_shift: ``(..., D·a_1)`` added to the first pre-activations (``C c``); broadcasts against ``x``.

    Returns:
        ``(y, log_diag_jac)``, both ``(..., D)`` (broadcast batch shape); ``log|det ∂y/∂x|`` is the sum of the latter.
    """
    _check(act, residual, gate)
    dim = x.shape[-1]
    h, log_j = x, None
    last = len(layers) - 1
    for idx, (w, log_diag, b) in enumerate(layers):
        u = _linear(h, w, b)
        if idx == 0 and context_shift is not None:
            u = u + context_shift
        if log_j is None:  # first layer: a_in = 1
            log_j = log_diag[..., 0]
        else:
            log_j = jax.nn.logsumexp(log_diag + log_j[..., None, :], axis=-1)
        if idx < last:
            h, log_act = activation(u, act)
            log_j = log_j + log_act.reshape(*log_act.shape[:-1], dim, log_act.shape[-1] // dim)  # no -1: batch may be 0
        else:
            h = u
    log_df = jnp.broadcast_to(log_j[..., 0], h.shape)
    return _residual(x, h, residual, gate), _residual_log_deriv(log_df, residual, gate)


def bnaf_jacobian(
    x: Array,
    layers: Sequence[Layer],
    act: str = "tanh",
    residual: str | None = None,
    gate: Array | None = None,
    context_shift: Array | None = None,
) -> Array:
    """The full (lower-triangular) Jacobian ``∂y/∂x`` of :func:`bnaf_forward`, shape ``(..., D, D)``.

    Propagated densely layer by layer, ``J_l = diag(σ'(u_l)) W_l J_{l-1}``, then combined with the residual
    (``+ LEAK·I``, ``+ I``, or the gated mix); used by the inverse's Newton step. Arguments as in
    :func:`bnaf_forward`; the batch shape is that of the broadcast ``x`` and ``context_shift``.
    """
    _check(act, residual, gate)
    dim = x.shape[-1]
    h, jac = x, None
    last = len(layers) - 1
    for idx, (w, _, b) in enumerate(layers):
        u = _linear(h, w, b)
        if idx == 0 and context_shift is not None:
            u = u + context_shift
        jac = w if jac is None else w @ jac
        if idx < last:
            h, log_act = activation(u, act)
            jac = jnp.exp(log_act)[..., None] * jac
        else:
            h = u
    jac = jnp.broadcast_to(jac, h.shape + (dim,))
    eye = jnp.eye(dim, dtype=x.dtype)
    if residual is None:
        return jac + LEAK * eye
    if residual == "normal":
        return jac + eye
    s = jax.nn.sigmoid(gate)[..., None]
    return s * eye + (1.0 - s) * jac


def _layer_inputs(x: Array, layers: Sequence[Layer], act: str, context_shift: Array | None) -> list[Array]:
    """The input of every layer: ``[x, h_1, …, h_{L-1}]``."""
    out, h = [x], x
    for idx, (w, _, b) in enumerate(layers[:-1]):
        u = _linear(h, w, b)
        if idx == 0 and context_shift is not None:
            u = u + context_shift
        h = _activation_value(u, act)
        out.append(h)
    return out


def bnaf_inverse(
    y: Array,
    layers: Sequence[Layer],
    act: str = "tanh",
    residual: str | None = None,
    gate: Array | None = None,
    context_shift: Array | None = None,
    tol: float | None = None,
) -> tuple[Array, Array]:
    """``x = f⁻¹(y)`` of a BNAF for any ``y`` and the elementwise ``log ∂x_i/∂y_i = -log ∂y_i/∂x_i``.

    Solves ``y_i = f_i(x_{<i}, x_i)`` for ``i = 0 … D-1`` by bracketed bisection on the scalar network of the
    ``i``-th diagonal blocks (values only), then takes one differentiable Newton step ``x - J⁻¹ (f(x) - y)`` (``J``
    held constant, triangular) so that derivatives w.r.t. ``y``, the layers and the context follow the
    implicit-function theorem. The bisection runs in one ``lax.fori_loop`` over ``i``, so a single compiled solve
    serves every ``D``; the paper gives no inverse, this one is the package's own.

    Args:
        y: outputs ``(..., D)``.
        layers, act, residual, gate, context_shift: as in :func:`bnaf_forward`.
        tol: bisection tolerance on ``x`` (default :func:`~numpyroflows.functional.root.default_tol`).

    Returns:
        ``(x, log_diag_jac_inverse)``, both of the broadcast batch shape ``(..., D)``.
    """
    _check(act, residual, gate)
    dim = y.shape[-1]
    batch = y.shape[:-1] if context_shift is None else jnp.broadcast_shapes(y.shape[:-1], context_shift.shape[:-1])
    y = jnp.broadcast_to(y, batch + (dim,))
    tol = default_tol(y.dtype) if tol is None else tol
    sg = lax.stop_gradient
    lays = [(sg(w), None, sg(b)) for w, _, b in layers]
    ctx = None if context_shift is None else sg(context_shift)
    g = None if gate is None else sg(gate)
    yd = sg(y)
    last = len(lays) - 1

    def solve_coordinate(i, x: Array) -> Array:
        # the diagonal blocks of row block i, and the contributions of x_{<i} (and the bias, the context) as offsets
        inputs = _layer_inputs(x, lays, act, ctx)
        diag_w, offsets = [], []
        for idx, ((w, _, b), h) in enumerate(zip(lays, inputs)):
            a_out, a_in = w.shape[0] // dim, w.shape[1] // dim
            w_rows = lax.dynamic_slice_in_dim(w, i * a_out, a_out, axis=0)
            diag_w.append(lax.dynamic_slice_in_dim(w_rows, i * a_in, a_in, axis=1))
            earlier = jnp.arange(dim * a_in) < i * a_in  # columns of x_{<i}: the rest of h is not yet solved
            off = _linear(h, jnp.where(earlier, w_rows, 0.0), lax.dynamic_slice_in_dim(b, i * a_out, a_out))
            if idx == 0 and ctx is not None:
                off = off + lax.dynamic_slice_in_dim(ctx, i * a_out, a_out, axis=ctx.ndim - 1)
            offsets.append(off)
        g_i = None if g is None else g[i]

        def coordinate(t: Array) -> Array:
            h = t[..., None]
            for idx, (w_ii, off) in enumerate(zip(diag_w, offsets)):
                u = _linear(h, w_ii) + off
                h = _activation_value(u, act) if idx < last else u
            return _residual(t, h[..., 0], residual, g_i)

        target = lax.dynamic_index_in_dim(yd, i, axis=yd.ndim - 1, keepdims=False)
        span = 1.0 + jnp.abs(target)
        root = bisect_increasing(coordinate, target, -span, span, tol=tol)
        return lax.dynamic_update_index_in_dim(x, root[..., None].astype(x.dtype), i, axis=x.ndim - 1)

    x = lax.fori_loop(0, dim, solve_coordinate, jnp.zeros_like(yd))
    x = sg(x)
    jac = sg(bnaf_jacobian(x, lays, act, residual, g, ctx))
    # differentiable Newton step through the full forward: exact implicit derivatives, value refined
    y_star, _ = bnaf_forward(x, layers, act, residual, gate, context_shift)
    step = solve_triangular(jac, (y_star - y)[..., None], lower=True)[..., 0]
    x = x - step
    _, log_d = bnaf_forward(x, layers, act, residual, gate, context_shift)
    return x, -log_d
