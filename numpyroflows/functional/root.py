"""Bracketed root finding for elementwise monotone maps, in JAX (jit- and vmap-compatible).

Used by every transform whose inverse has no closed form (monotone B-splines, monotone mixtures, planar, Sylvester,
block neural autoregressive flows). The solve runs on values only (``stop_gradient``), bracket expansion and
bisection are ``lax.while_loop``\\ s, and :func:`newton_polish` then takes one Newton step *with* autodiff so that
derivatives of the inverse follow the implicit function theorem: ``dx/dθ = -(∂f/∂θ) / f'(x)``, ``dx/dy = 1 / f'(x)``.
Same algorithm and tolerances as ``pyroflows.functional.root``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def default_tol(dtype) -> float:
    """Absolute tolerance on the solution (scaled by ``1 + |x|``): a few ulps above the working precision."""
    return 1e-12 if jnp.dtype(dtype) == jnp.float64 else 1e-6


def bisect_increasing(
    fn: Callable[[Array], Array],
    target: Array,
    lo: Array,
    hi: Array,
    *,
    tol: float | None = None,
    max_iter: int = 200,
    max_expand: int = 64,
) -> Array:
    """Solve ``fn(x) = target`` elementwise for an increasing ``fn`` by bisection (values only, no gradient).

    ``lo``/``hi`` are initial guesses of a bracket, widened by doubling until they bracket the root (an increasing
    map onto the reals always has one); then bisection until the bracket is narrower than ``tol·(1 + |x|)`` or
    ``max_iter`` halvings. Works under ``jit`` and ``vmap``: the loops run until every element has converged, and
    nothing can be raised there, so an element that is still unbracketed after ``max_expand`` doublings, or not
    converged after ``max_iter`` halvings (no root: ``fn`` is not onto the reals), comes back NaN, never a wrong
    number.
    """
    target = lax.stop_gradient(target)
    lo, hi, target = jnp.broadcast_arrays(lax.stop_gradient(lo).astype(target.dtype),
                                          lax.stop_gradient(hi).astype(target.dtype), target)
    tol = default_tol(target.dtype) if tol is None else tol

    def needs_expanding(state):
        *_, below, above, i = state
        return jnp.any(below | above) & (i < max_expand)

    def expand(state):
        lo, hi, width, below, above, i = state
        lo, hi = jnp.where(below, lo - width, lo), jnp.where(above, hi + width, hi)
        return lo, hi, width * 2, fn(lo) > target, fn(hi) < target, i + 1

    width = jnp.maximum(jnp.abs(hi - lo), 1.0)
    # the bracket's state is carried, not recomputed: XLA may round fn differently in another fused context
    lo, hi, _, below, above, _ = lax.while_loop(
        needs_expanding, expand, (lo, hi, width, fn(lo) > target, fn(hi) < target, 0))

    def not_converged(state):
        lo, hi, i = state
        mid = 0.5 * (lo + hi)
        return jnp.any(hi - lo > tol * (1 + jnp.abs(mid))) & (i < max_iter)

    def halve(state):
        lo, hi, i = state
        mid = 0.5 * (lo + hi)
        right = fn(mid) < target
        return jnp.where(right, mid, lo), jnp.where(right, hi, mid), i + 1

    lo, hi, _ = lax.while_loop(not_converged, halve, (lo, hi, 0))
    mid = 0.5 * (lo + hi)
    solved = ~(below | above) & (hi - lo <= tol * (1 + jnp.abs(mid)))
    return jnp.where(solved, mid, jnp.nan)  # never a wrong number: NaN where no root was bracketed and narrowed


def newton_polish(fn_and_deriv: Callable[[Array], tuple[Array, Array]], x: Array, target: Array) -> Array:
    """One Newton step from a converged root, differentiable through ``fn``'s parameters and ``target``.

    The value changes by at most the solver tolerance; the derivative equals the implicit-function derivative.
    """
    x = lax.stop_gradient(x)
    value, deriv = fn_and_deriv(x)
    return x - (value - target) / lax.stop_gradient(deriv)
