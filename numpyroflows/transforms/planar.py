"""Planar flow with an exact inverse of fresh data (Rezende & Mohamed 2015), in JAX.

Mirrors :mod:`pyroflows.transforms.planar`: same constructor, parameter names (``head.u``, ``head.w``, ``head.b``, or
``head.net.*`` with a context), shapes, initial distributions and math (:mod:`numpyroflows.functional.planar`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax

from ..functional.planar import IDENTITY_WTU, planar_constrain, planar_forward, planar_inverse
from ..nn.params import head_params, param_head_init
from .base import FlowTransform, default_key

Array = jax.Array


class PlanarTransform(FlowTransform):
    """Planar flow ``y = x + û tanh(wᵀx + b)``, invertible for every parameter value, with an exact inverse.

    ``û = u + (m(wᵀu) - wᵀu) w/‖w‖²``, ``m(a) = -1 + softplus(a)`` keeps ``wᵀû ≥ -1``; the inverse solves the scalar
    monotone equation for ``α = wᵀx`` (bisection + differentiable Newton step) and inverts any ``y``. With
    ``context_dim > 0`` all of ``u, w, b`` come from an MLP on the context.

    Same arguments as :class:`pyroflows.transforms.PlanarTransform`, plus ``key`` (PRNG key for the initial values).
    Parameters: ``"head.u"`` ``(D,)``, ``"head.w"`` ``(D,)``, ``"head.b"`` ``()``, or ``"head.net.*"``.
    """

    def __init__(self, input_dim: int, context_dim: int = 0, hidden_dims: Sequence[int] = (64, 64), *,
                 key: Array | None = None) -> None:
        super().__init__(input_dim, context_dim)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        d = self.input_dim
        bound = 1.0 / math.sqrt(d)
        _, k_w, k_b, k_net = jax.random.split(default_key(key), 4)
        w = jax.random.uniform(k_w, (d,), minval=-bound, maxval=bound)
        init = {
            "u": IDENTITY_WTU * w / (w @ w),  # û = 0: the identity, as in pyroflows
            "w": w,
            "b": jax.random.uniform(k_b, (), minval=-bound, maxval=bound),
        }
        self.shapes = (("u", (d,)), ("w", (d,)), ("b", ()))
        head = param_head_init(k_net, init, self.context_dim, self.hidden_dims)
        self.params = {f"head.{k}": v for k, v in head.items()}

    def _params(self, params: dict, context: Array | None) -> tuple[Array, Array, Array]:
        p = head_params(params, self.shapes, context)
        return p["u"], p["w"], p["b"]

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        return planar_forward(x, *self._params(params, context))

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        return planar_inverse(y, *self._params(params, context))

    def u_hat(self, context: Array | None = None) -> Array:
        """The constrained ``û`` (with ``wᵀû ≥ -1``) for this context."""
        u, w, _ = self._params(self.params, context)
        return planar_constrain(u, w)[0]
