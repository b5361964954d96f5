"""Planar flow with an exact inverse of fresh data (Rezende & Mohamed 2015), in JAX.

:class:`PlanarTransform` holds the parameters; the math is :mod:`numpyroflows.functional.planar`. Constructor,
parameter names (``head.u``, ``head.w``, ``head.b``, or ``head.net.*`` with a context), shapes and initial
distributions are those of ``pyroflows.transforms.PlanarTransform`` (plus a PRNG ``key``), so parameters move between
the packages by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax

from .._dtype import float_dtype, uniform
from ..functional.planar import IDENTITY_WTU, planar_constrain, planar_forward, planar_inverse
from ..nn.params import head_params, param_head_init
from .base import FlowTransform, default_key

Array = jax.Array


class PlanarTransform(FlowTransform):
    """Planar flow ``y = x + û tanh(wᵀx + b)``, invertible for every parameter value, with an exact inverse.

    ``û = u + (m(wᵀu) - wᵀu) w/‖w‖²``, ``m(a) = -1 + softplus(a)``, keeps ``wᵀû ≥ -1`` (appendix A of the paper);
    ``log|det| = log|1 + wᵀû tanh'(wᵀx + b)|``. The inverse solves the scalar monotone equation
    ``wᵀy = α + wᵀû tanh(α + b)`` for ``α = wᵀx`` by bracketed bisection and a differentiable Newton step, then
    ``x = y - û tanh(α + b)``: it inverts any ``y``, not only outputs of the forward pass.

    The layer starts at the identity: ``w`` and ``b`` are drawn in ``±1/√D`` and ``u = c w/‖w‖²`` with
    ``c = softplus⁻¹(1)``, so that ``û = 0``; the first gradient step moves ``u``, and ``w``, ``b`` follow.

    With ``context_dim > 0`` all of ``u, w, b`` are produced from the context by an MLP (amortized planar flows, as in
    the VAE experiments of the paper); their batch shape is the context's and broadcasts against the input's.

    Args:
        input_dim: D.
        context_dim: size of the context (0: free parameters).
        hidden_dims: hidden widths of the context network.
        key: PRNG key of the initial values and of the context network.
        dtype: floating type of the parameters (``None``: JAX's default; see "Precision" in
            :mod:`numpyroflows.transforms.base`).

    Parameters: ``"head.u"`` ``(D,)``, ``"head.w"`` ``(D,)``, ``"head.b"`` ``()``, or ``"head.net.*"``.

    Example:
        >>> t = PlanarTransform(3, key=jax.random.PRNGKey(0))
        >>> y, ladj = t.forward_and_log_det(jnp.ones((10, 3)))
        >>> x, _ = t.inverse_and_log_det(y)

    Reference: Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", section 4.1 and appendix A.
    """

    def __init__(self, input_dim: int, context_dim: int = 0, hidden_dims: Sequence[int] = (64, 64), *,
                 key: Array | None = None, dtype: Any = None) -> None:
        super().__init__(input_dim, context_dim)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        d, dtype = self.input_dim, float_dtype(dtype)
        bound = 1.0 / math.sqrt(d)
        _, k_w, k_b, k_net = jax.random.split(default_key(key), 4)
        w = uniform(k_w, (d,), dtype, -bound, bound)
        init = {
            "u": IDENTITY_WTU * w / (w @ w),  # u along w with wᵀu = softplus⁻¹(1): wᵀû = 0 and û = 0, the identity
            "w": w,
            "b": uniform(k_b, (), dtype, -bound, bound),
        }
        self.shapes = (("u", (d,)), ("w", (d,)), ("b", ()))
        head = param_head_init(k_net, init, self.context_dim, self.hidden_dims, dtype)
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
