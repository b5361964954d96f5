"""Radial flow ``y = x + β h(α, r) (x - x₀)`` (Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows"),
in JAX.

``r = ‖x - x₀‖``, ``h(α, r) = 1 / (α + r)``, ``α = softplus(raw_α) > 0`` and ``β = -α + softplus(raw_β) ≥ -α``
(the invertibility condition of the paper's appendix A). The Jacobian is ``(1 + βh) I + βh' (x-x₀)(x-x₀)ᵀ / r``,
so ``log|det| = (D-1) log(1 + βh) + log(1 + βh + βh' r)`` with ``h' = -1/(α+r)²``. Writing
``s = α + β = softplus(raw_β) ≥ 0`` both factors are ratios of non-negative terms, ``1 + βh = (s + r)/(α + r)`` and
``1 + βh + βh'r = (r² + 2αr + αs)/(α + r)²``, which is how they are computed (no cancellation).

The inverse is in closed form: the map only rescales ``x - x₀``, so ``ρ = ‖y - x₀‖ = r (s + r)/(α + r)``, i.e.
``r² + (s - ρ) r - αρ = 0``, whose positive root is taken in the cancellation-free form (``(-c + √(c²+4αρ))/2`` for
``c = s - ρ ≤ 0``, ``2αρ / (c + √(c²+4αρ))`` otherwise); then ``x = y - β/(s + r) (y - x₀)``.

Shapes: ``x``/``y`` ``(..., D)``; ``x0`` ``(..., D)``; ``raw_alpha``, ``raw_beta`` ``(...)``; batch shapes broadcast.
The functions are pure (jit- and vmap-able); formulas, constants and parameter layouts are those of
``pyroflows.functional.radial``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _tiny(t: Array) -> float:
    return float(jnp.finfo(t.dtype).tiny)


def _softplus(x: Array) -> Array:
    """``log(1 + eˣ)``, and ``x`` itself above 20 (the threshold of ``torch.nn.functional.softplus``, so values match
    pyroflows to rounding)."""
    return jnp.where(x > 20.0, x, jnp.log1p(jnp.exp(jnp.minimum(x, 20.0))))


def radial_alpha_beta(raw_alpha: Array, raw_beta: Array) -> tuple[Array, Array, Array]:
    """Constrained ``(α, β, α + β)`` of a radial flow from raw parameters.

    ``α = softplus(raw_alpha) > 0``, ``β = -α + softplus(raw_beta) ≥ -α`` (Rezende & Mohamed 2015, appendix A);
    ``α + β = softplus(raw_beta)`` is returned directly so that callers never cancel ``α`` against ``β``. The three
    outputs have the broadcast shape of the raw parameters.
    """
    alpha = _softplus(jnp.asarray(raw_alpha))
    s = _softplus(jnp.asarray(raw_beta))
    return alpha, s - alpha, s


def _log_det(r: Array, alpha: Array, s: Array, dim: int) -> Array:
    tiny = _tiny(r)
    log_den = jnp.log(jnp.maximum(alpha + r, tiny))
    log_scale = jnp.log(jnp.maximum(s + r, tiny)) - log_den
    log_radial = jnp.log(jnp.maximum(r * r + 2 * alpha * r + alpha * s, tiny)) - 2 * log_den
    return (dim - 1) * log_scale + log_radial


def _norm(v: Array) -> Array:
    """``‖v‖`` over the last axis with a finite gradient at 0."""
    return jnp.sqrt(jnp.maximum((v * v).sum(-1), _tiny(v)))


def radial_forward(x: Array, x0: Array, raw_alpha: Array, raw_beta: Array) -> tuple[Array, Array]:
    """Radial map ``y = x + β/(α + r) (x - x₀)`` and ``log|det ∂y/∂x| = (D-1) log(1 + βh) + log(1 + βh + βh'r)``.

    Rezende & Mohamed 2015, eq. (14) and appendix A; both factors of the log-determinant are computed as ratios of
    non-negative terms (module docstring), so it has no cancellation.

    Args:
        x: inputs ``(..., D)``.
        x0: centre ``(..., D)``.
        raw_alpha, raw_beta: raw parameters ``(...)``, constrained by :func:`radial_alpha_beta`.

    Returns:
        ``(y, log_det)``, shapes ``(..., D)`` and ``(...)`` (the broadcast batch shape).
    """
    alpha, beta, s = radial_alpha_beta(raw_alpha, raw_beta)
    diff = x - x0
    r = _norm(diff)
    y = x + (beta / jnp.maximum(alpha + r, _tiny(r)))[..., None] * diff
    return y, _log_det(r, alpha, s, x.shape[-1])


def radial_inverse(y: Array, x0: Array, raw_alpha: Array, raw_beta: Array) -> tuple[Array, Array]:
    """Closed-form inverse of :func:`radial_forward` for any ``y``, and ``log|det ∂x/∂y|``.

    ``r`` is the positive root of ``r² + (α + β - ρ) r - αρ = 0`` with ``ρ = ‖y - x₀‖`` (computed stably), then
    ``x = x₀ + (y - x₀) / (1 + βh(r))``. The map is that of Rezende & Mohamed 2015; the inverse follows from it (module
    docstring).

    Args:
        y: outputs ``(..., D)``.
        x0, raw_alpha, raw_beta: as in :func:`radial_forward`.

    Returns:
        ``(x, log_det)`` with ``log_det`` minus the forward log-determinant at ``x``.
    """
    alpha, beta, s = radial_alpha_beta(raw_alpha, raw_beta)
    tiny = _tiny(y)
    diff = y - x0
    rho = _norm(diff)
    c = s - rho
    disc = jnp.sqrt(jnp.maximum(c * c + 4 * alpha * rho, tiny))
    pos = c > 0
    r = jnp.where(pos, 2 * alpha * rho / jnp.where(pos, c + disc, jnp.ones_like(c)), 0.5 * (disc - c))
    x = y - (beta / jnp.maximum(s + r, tiny))[..., None] * diff
    return x, -_log_det(r, alpha, s, y.shape[-1])
