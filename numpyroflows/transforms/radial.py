"""Radial flow with a closed-form inverse (Rezende & Mohamed 2015), in JAX.

:class:`RadialTransform` holds the parameters; the math is :mod:`numpyroflows.functional.radial`. Constructor,
parameter names (``head.x0``, ``head.raw_alpha``, ``head.raw_beta``, or ``head.net.*`` with a context), shapes and
initial distributions are those of ``pyroflows.transforms.RadialTransform`` (plus a PRNG ``key``), so parameters move
between the packages by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax

from .._dtype import float_dtype, uniform
from ..functional.radial import radial_forward, radial_inverse
from ..nn.params import head_params, param_head_init
from .base import FlowTransform, default_key

Array = jax.Array


class RadialTransform(FlowTransform):
    """Radial flow ``y = x + β (x - x₀)/(α + ‖x - x₀‖)``, invertible for every parameter value, closed-form inverse.

    ``α = softplus(raw_α) > 0`` and ``β = -α + softplus(raw_β) ≥ -α`` (appendix A of the paper);
    ``log|det| = (D-1) log(1 + βh) + log(1 + βh + βh'r)`` with ``h = 1/(α + r)``. The inverse takes ``r`` from the
    positive root of ``r² + (α + β - ‖y - x₀‖) r - α‖y - x₀‖ = 0`` and rescales ``y - x₀``; it inverts any ``y``.

    With ``context_dim > 0`` all of ``x₀, α, β`` are produced from the context by an MLP (amortized radial flows).

    Args:
        input_dim: D.
        context_dim: size of the context (0: free parameters).
        hidden_dims: hidden widths of the context network.
        key: PRNG key of the initial values (each uniform in ``±1/√D``) and of the context network.
        dtype: floating type of the parameters (``None``: JAX's default; see "Precision" in
            :mod:`numpyroflows.transforms.base`).

    Parameters: ``"head.x0"`` ``(D,)``, ``"head.raw_alpha"`` ``()``, ``"head.raw_beta"`` ``()``, or ``"head.net.*"``.

    Example:
        >>> t = RadialTransform(3, key=jax.random.PRNGKey(0))
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
        k_x0, k_a, k_b, k_net = jax.random.split(default_key(key), 4)
        init = {
            "x0": uniform(k_x0, (d,), dtype, -bound, bound),
            "raw_alpha": uniform(k_a, (), dtype, -bound, bound),
            "raw_beta": uniform(k_b, (), dtype, -bound, bound),
        }
        self.shapes = (("x0", (d,)), ("raw_alpha", ()), ("raw_beta", ()))
        head = param_head_init(k_net, init, self.context_dim, self.hidden_dims, dtype)
        self.params = {f"head.{k}": v for k, v in head.items()}

    def _params(self, params: dict, context: Array | None) -> tuple[Array, Array, Array]:
        p = head_params(params, self.shapes, context)
        return p["x0"], p["raw_alpha"], p["raw_beta"]

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        return radial_forward(x, *self._params(params, context))

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        return radial_inverse(y, *self._params(params, context))
