"""Radial flow with a closed-form inverse (Rezende & Mohamed 2015), in JAX.

Mirrors :mod:`pyroflows.transforms.radial`: same constructor, parameter names (``head.x0``, ``head.raw_alpha``,
``head.raw_beta``, or ``head.net.*`` with a context), shapes, initial distributions and math
(:mod:`numpyroflows.functional.radial`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax

from ..functional.radial import radial_forward, radial_inverse
from ..nn.params import head_params, param_head_init
from .base import FlowTransform, default_key

Array = jax.Array


class RadialTransform(FlowTransform):
    """Radial flow ``y = x + β (x - x₀)/(α + ‖x - x₀‖)``, invertible for every parameter value, closed-form inverse.

    ``α = softplus(raw_α) > 0``, ``β = -α + softplus(raw_β) ≥ -α``; the inverse inverts any ``y``. With
    ``context_dim > 0`` all of ``x₀, α, β`` come from an MLP on the context.

    Same arguments as :class:`pyroflows.transforms.RadialTransform`, plus ``key`` (PRNG key for the initial values).
    Parameters: ``"head.x0"`` ``(D,)``, ``"head.raw_alpha"`` ``()``, ``"head.raw_beta"`` ``()``, or ``"head.net.*"``.
    """

    def __init__(self, input_dim: int, context_dim: int = 0, hidden_dims: Sequence[int] = (64, 64), *,
                 key: Array | None = None) -> None:
        super().__init__(input_dim, context_dim)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        d = self.input_dim
        bound = 1.0 / math.sqrt(d)
        k_x0, k_a, k_b, k_net = jax.random.split(default_key(key), 4)
        init = {
            "x0": jax.random.uniform(k_x0, (d,), minval=-bound, maxval=bound),
            "raw_alpha": jax.random.uniform(k_a, (), minval=-bound, maxval=bound),
            "raw_beta": jax.random.uniform(k_b, (), minval=-bound, maxval=bound),
        }
        self.shapes = (("x0", (d,)), ("raw_alpha", ()), ("raw_beta", ()))
        head = param_head_init(k_net, init, self.context_dim, self.hidden_dims)
        self.params = {f"head.{k}": v for k, v in head.items()}

    def _params(self, params: dict, context: Array | None) -> tuple[Array, Array, Array]:
        p = head_params(params, self.shapes, context)
        return p["x0"], p["raw_alpha"], p["raw_beta"]

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        return radial_forward(x, *self._params(params, context))

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        return radial_inverse(y, *self._params(params, context))
