"""Planar flow ``y = x + û tanh(wᵀx + b)`` (Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows"),
in JAX.

The invertibility condition ``wᵀû ≥ -1`` is enforced by the reparameterisation of the paper's appendix A:
``û = u + (m(wᵀu) - wᵀu) w / ‖w‖²`` with ``m(a) = -1 + softplus(a)``, so that ``wᵀû = m(wᵀu) > -1`` for every raw
``u, w``. The Jacobian is ``I + û wᵀ tanh'(z)``, ``z = wᵀx + b``, whose determinant is ``1 + wᵀû tanh'(z)``; with
``wᵀû = -1 + softplus(wᵀu)`` and ``tanh' = 1 - tanh²`` it is computed without cancellation as
``tanh²(z) + softplus(wᵀu) (1 - tanh²(z)) ≥ 0``.

The inverse has no closed form but reduces to one scalar monotone equation: with ``α = wᵀx``,
``wᵀy = α + wᵀû tanh(α + b)``, whose derivative ``1 + wᵀû tanh'`` is non-negative. It is solved by bracketed
bisection on ``[wᵀy - |wᵀû|, wᵀy + |wᵀû|]`` (the root always lies there since ``|tanh| < 1``) followed by one
differentiable Newton step (:func:`~numpyroflows.functional.root.newton_polish`), and then ``x = y - û tanh(α + b)``.
It inverts any ``y``, not only outputs the map produced itself (no cache is involved).

Shapes: ``x``/``y`` ``(..., D)``; ``u``, ``w`` ``(..., D)``; ``b`` ``(...)``; all batch shapes broadcast. The
functions are pure and jit/vmap-able; formulas, constants and parameter layouts are those of
``pyroflows.functional.planar``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from .root import bisect_increasing, newton_polish

#: ``softplus⁻¹(1) = log(e - 1)``: with ``wᵀu`` equal to it, ``m(wᵀu) = 0`` and ``û = 0`` (the identity)
IDENTITY_WTU = math.log(math.expm1(1.0))

Array = jax.Array


def _tiny(t: Array) -> float:
    return float(jnp.finfo(t.dtype).tiny)


def _softplus(x: Array) -> Array:
    """``log(1 + eˣ)``, and ``x`` itself above 20 (the threshold of ``torch.nn.functional.softplus``, so values match
    pyroflows to rounding)."""
    return jnp.where(x > 20.0, x, jnp.log1p(jnp.exp(jnp.minimum(x, 20.0))))


def planar_constrain(u: Array, w: Array) -> tuple[Array, Array, Array]:
    """The constrained ``û`` of a planar flow and the scalars ``wᵀû`` and ``1 + wᵀû``.

    ``û = u + (m(wᵀu) - wᵀu) w / ‖w‖²`` with ``m(a) = -1 + softplus(a)`` (Rezende & Mohamed 2015, appendix A), so
    that ``wᵀû = m(wᵀu) ≥ -1`` for any raw ``u``, ``w``: every raw value gives an invertible layer.

    Args:
        u: raw ``u``, shape ``(..., D)``.
        w: ``w``, shape ``(..., D)``.

    Returns:
        ``(û, wᵀû, 1 + wᵀû)``; the last is ``softplus(wᵀu)``, computed directly (no cancellation).
    """
    wu = (w * u).sum(-1)
    sp = _softplus(wu)
    m = sp - 1.0
    wsq = jnp.maximum((w * w).sum(-1), _tiny(w))
    u_hat = u + ((m - wu) / wsq)[..., None] * w
    return u_hat, m, sp


def _log_det_term(t: Array, sp: Array) -> Array:
    """``log(1 + m tanh'(z))`` with ``m = sp - 1`` and ``t = tanh(z)``, as ``log(t² + sp (1 - t²))``."""
    t2 = t * t
    return jnp.log(jnp.maximum(t2 + sp * (1.0 - t2), _tiny(t)))


def planar_forward(x: Array, u: Array, w: Array, b: Array) -> tuple[Array, Array]:
    """Planar map ``y = x + û tanh(wᵀx + b)`` and ``log|det ∂y/∂x| = log|1 + wᵀû tanh'(wᵀx + b)|``.

    Rezende & Mohamed 2015, eq. (10)-(12) and appendix A; the log-determinant is computed without cancellation
    (module docstring).

    Args:
        x: inputs ``(..., D)``.
        u: raw (unconstrained) ``u`` ``(..., D)``; ``û`` is formed by :func:`planar_constrain`.
        w: ``(..., D)``.
        b: bias ``(...)``.

    Returns:
        ``(y, log_det)`` with ``log_det`` of the broadcast batch shape.
    """
    u_hat, _, sp = planar_constrain(u, w)
    t = jnp.tanh((w * x).sum(-1) + b)
    y = x + u_hat * t[..., None]
    return y, _log_det_term(t, sp)


def planar_inverse(y: Array, u: Array, w: Array, b: Array) -> tuple[Array, Array]:
    """Exact inverse of :func:`planar_forward` for any ``y`` and ``log|det ∂x/∂y|``.

    Solves ``wᵀy = α + wᵀû tanh(α + b)`` for ``α = wᵀx`` by bracketed bisection plus one differentiable Newton step
    (derivatives follow the implicit-function theorem), then ``x = y - û tanh(α + b)``; ``log_det = -log|1 + wᵀû
    tanh'(α + b)|``. The map is that of Rezende & Mohamed 2015; the scalar reduction follows from
    ``x = y - û tanh(wᵀx + b)``. Jit- and vmap-compatible (the bisection is a ``lax.while_loop``).

    Args:
        y: outputs ``(..., D)``.
        u, w, b: as in :func:`planar_forward`.

    Returns:
        ``(x, log_det)``, shapes ``(..., D)`` and ``(...)`` (the broadcast batch shape).
    """
    u_hat, m, sp = planar_constrain(u, w)
    target = (w * y).sum(-1)
    b = jnp.asarray(b).astype(target.dtype)
    # the bisection carries a fixed shape: give the target the full batch shape of the scalar equation
    target = jnp.broadcast_to(target, jnp.broadcast_shapes(target.shape, m.shape, b.shape))
    m_d, b_d = lax.stop_gradient(m), lax.stop_gradient(b)

    def fn(a: Array) -> Array:
        return a + m_d * jnp.tanh(a + b_d)

    def fn_and_deriv(a: Array) -> tuple[Array, Array]:
        t = jnp.tanh(a + b)
        t2 = t * t
        deriv = jnp.maximum(t2 + sp * (1.0 - t2), _tiny(t))
        return a + m * t, deriv

    half = jnp.abs(m_d)
    alpha = bisect_increasing(fn, target, target - half, target + half)
    alpha = newton_polish(fn_and_deriv, alpha, target)
    t = jnp.tanh(alpha + b)
    x = y - u_hat * t[..., None]
    return x, -_log_det_term(t, sp)
