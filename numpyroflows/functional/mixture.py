"""Positive mixtures of monotone functions, in JAX: a linear term plus a non-negative combination of logistic sigmoids.

``y = a·x + Σ_k w_k σ((x - b_k) / s_k)`` with ``a > 0``, ``w_k ≥ 0``, ``s_k > 0`` and ``σ`` the logistic sigmoid.
Every term is non-decreasing and the linear term strictly increasing, so the map is a bijection of R with
``dy/dx = a + Σ_k (w_k / s_k) σ(z_k) σ(-z_k) ≥ a``, ``z_k = (x - b_k)/s_k``. This is the monotone "sum of sigmoids"
family of neural autoregressive flows (Huang et al. 2018, "Neural Autoregressive Flows"), here with an explicit
linear term that makes the map onto R (as in the "mixture of logistics" CDFs of Ho et al. 2019, "Flow++").

Raw parameters (last axis, ``3K + 1``): ``[raw_a | raw_w (K) | raw_b (K) | raw_s (K)]`` with
``a = MIN_A + softplus(raw_a + c_a)`` (1 at raw 0), ``w_k = softplus(raw_w + c_w)`` (``0.1 / K`` at raw 0),
``b_k = raw_b + β_k`` with fixed, evenly spread offsets ``β = linspace(-3, 3, K)`` (so that components at raw zeros
are distinct and receive distinct gradients), ``s_k = MIN_S + softplus(raw_s + c_s)`` (1 at raw 0). Raw zeros give
``x ≤ y ≤ x + 0.1``: close to the identity.

The inverse has no closed form. Since ``0 ≤ Σ w σ ≤ Σ w``, the root lies in ``[(y - Σw)/a, y/a]``; it is found by
bisection on that bracket (values only) and polished by one differentiable Newton step
(:mod:`numpyroflows.functional.root`), so that its derivatives are the implicit-function ones.

All functions are pure and jit/vmap-able. Formulas, constants and the raw-parameter layout are those of
``pyroflows.functional.mixture`` (down to the bits of the offsets ``β``), so raw parameters move between the packages
unchanged.
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .root import bisect_increasing, newton_polish

Array = jax.Array

MIN_A = 1e-3
MIN_S = 1e-2
TOTAL_W0 = 0.1
CENTER_SPREAD = 3.0
_A_SHIFT = math.log(math.expm1(1.0 - MIN_A))
_S_SHIFT = math.log(math.expm1(1.0 - MIN_S))
_SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus's default: linear above it


def num_params(count_bins: int) -> int:
    """Number of raw parameters per element for ``count_bins`` sigmoid components: ``3 · count_bins + 1``."""
    return 3 * count_bins + 1


def _softplus(x: Array) -> Array:
    """``log(1 + eˣ)``, exactly ``x`` above 20 like ``torch.nn.functional.softplus`` (the large branch stays finite)."""
    return jnp.where(x > _SOFTPLUS_THRESHOLD, x, jnp.log1p(jnp.exp(jnp.minimum(x, _SOFTPLUS_THRESHOLD))))


def _centers(k: int, dtype) -> Array:
    """``linspace(-CENTER_SPREAD, CENTER_SPREAD, k)`` rounded exactly as torch's CPU kernel does (one fused multiply-add
    from the nearer end), so both packages use bit-identical offsets; zeros for ``k = 1``."""
    if k == 1:
        return jnp.zeros((1,), dtype)
    np_dtype = np.dtype(dtype)
    step = Fraction(float(np_dtype.type(2 * CENTER_SPREAD) / np_dtype.type(k - 1)))
    spread = Fraction(CENTER_SPREAD)
    exact = [-spread + step * i if i < k // 2 else spread - step * (k - 1 - i) for i in range(k)]
    return jnp.asarray(np.array([float(e) for e in exact], dtype=np_dtype))


def mixture_params(params: Array) -> tuple[Array, Array, Array, Array]:
    """Constrained ``(a (...), w (..., K), b (..., K), s (..., K))`` from raw parameters ``(..., 3K + 1)``.

    ``a = MIN_A + softplus(raw_a + c_a)``, ``w = softplus(raw_w + c_w)``, ``b = raw_b + linspace(-3, 3, K)`` and
    ``s = MIN_S + softplus(raw_s + c_s)``, with the shifts chosen so that raw zeros give ``a = 1``, ``w_k = 0.1 / K``
    and ``s_k = 1`` (module docstring).
    """
    k = (params.shape[-1] - 1) // 3
    a = MIN_A + _softplus(params[..., 0] + _A_SHIFT)
    w = _softplus(params[..., 1 : k + 1] + math.log(math.expm1(TOTAL_W0 / k)))
    b = params[..., k + 1 : 2 * k + 1] + _centers(k, params.dtype)
    s = MIN_S + _softplus(params[..., 2 * k + 1 :] + _S_SHIFT)
    return a, w, b, s


def _value_and_deriv(x: Array, a: Array, w: Array, b: Array, s: Array) -> tuple[Array, Array]:
    z = (x[..., None] - b) / s
    sig = jax.nn.sigmoid(z)
    y = a * x + jnp.sum(w * sig, axis=-1)
    # σ'(z) = σ(z) σ(-z): both factors in (0, 1], no overflow; the sum is ≥ a ≥ MIN_A > 0, so its log is finite.
    d = a + jnp.sum(w / s * sig * jax.nn.sigmoid(-z), axis=-1)
    return y, d


def _broadcast(z: Array, params: Array) -> tuple[Array, Array]:
    z, params = jnp.asarray(z), jnp.asarray(params)
    shape = jnp.broadcast_shapes(z.shape, params.shape[:-1])
    return jnp.broadcast_to(z, shape), jnp.broadcast_to(params, shape + params.shape[-1:])


def mixture_forward(x: Array, params: Array) -> tuple[Array, Array]:
    """``y = a x + Σ w σ((x - b)/s)`` and ``log(a + Σ (w/s) σ'((x - b)/s))`` elementwise.

    ``params`` broadcasts to ``x.shape + (3K + 1,)`` (layout in the module docstring); both outputs have the
    broadcast batch shape. The log-derivative is at least ``log MIN_A``, so it is finite for any input.

    Example:
        >>> y, ladj = mixture_forward(jnp.linspace(-2, 2, 4), jnp.zeros((4, 25)))  # K = 8, close to the identity
    """
    x, params = _broadcast(x, params)
    y, d = _value_and_deriv(x, *mixture_params(params))
    return y, jnp.log(d)


def mixture_inverse(y: Array, params: Array, tol: float | None = None) -> tuple[Array, Array]:
    """``x`` with ``mixture_forward(x) = y`` and the FORWARD log-derivative at ``x``.

    Bisection on ``[(y - Σw)/a, y/a]`` (values only), then one Newton step with autodiff so that ``dx/dθ`` and
    ``dx/dy`` are the implicit-function derivatives. ``params`` as in :func:`mixture_forward`; ``tol`` is the
    bisection tolerance (default :func:`~numpyroflows.functional.root.default_tol` of the dtype). Jit- and
    vmap-compatible (the bisection is a ``lax.while_loop``).
    """
    y, params = _broadcast(y, params)
    a, w, b, s = mixture_params(params)
    a0, w0, b0, s0 = (lax.stop_gradient(t) for t in (a, w, b, s))
    y0 = lax.stop_gradient(y)
    x0 = bisect_increasing(
        lambda t: _value_and_deriv(t, a0, w0, b0, s0)[0], y0, (y0 - jnp.sum(w0, axis=-1)) / a0, y0 / a0, tol=tol
    )
    x = newton_polish(lambda t: _value_and_deriv(t, a, w, b, s), x0, y)
    _, d = _value_and_deriv(x, a, w, b, s)
    return x, jnp.log(d)
