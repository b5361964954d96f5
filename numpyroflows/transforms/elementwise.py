"""Elementwise bijections in JAX: a transformer with constant (or context-dependent) parameters, and fixed
nonlinearities (leaky ReLU with learnable slopes, sigmoid, tanh).

Each transform acts on every coordinate separately, so its Jacobian is diagonal and ``log|det|`` is a sum over the
dimensions. Learnable parameters sit in a parameter head (``"head.params"`` / ``"head.raw_slope"``, or ``"head.net.*"``
when a context network produces them). Constructors, parameter names, initial values and math are those of
``pyroflows.transforms`` (plus a keyword-only PRNG ``key``), so parameters move between the packages by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import constraints

from .. import _checks
from .._dtype import float_dtype
from ..functional import linear as F_lin
from ..nn.params import head_params, param_head_init
from .base import FlowTransform, default_key
from .transformers import Transformer, make_transformer

Array = jax.Array

_SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus returns x itself above this


def _softplus(x: Array) -> Array:
    """``log(1 + e^x)``, and ``x`` itself above 20 (as ``torch.nn.functional.softplus``, so values match pyroflows
    to rounding), written with ``where`` so that neither branch overflows."""
    return jnp.where(x > _SOFTPLUS_THRESHOLD, x, jnp.log1p(jnp.exp(jnp.where(x > _SOFTPLUS_THRESHOLD, 0.0, x))))


def _head_apply(params: dict, name: str, shape: tuple[int, ...], context: Array | None) -> Array:
    """The one parameter set ``name`` of the transform's head (free, or computed from the context)."""
    return head_params(params, {name: tuple(shape)}, context)[name]


class ElementwiseTransform(FlowTransform):
    """``x_i = τ(y_i; θ_i)`` (data ``y`` to noise ``x``, the density direction), one parameter set per dimension;
    sampling uses ``τ⁻¹``.

    With ``context_dim > 0``, ``θ`` is produced from the context by an MLP (a conditional elementwise flow). The
    parameters start at the transformer's identity.

    Args:
        input_dim: D.
        transformer: a transformer name (``"spline"``, ``"affine"``, ``"bspline"``, ``"mixture"``, ...) or instance.
        context_dim: size of the context (0: none).
        hidden_dims: hidden widths of the context network.
        count_bins, bound: spline options, passed to the transformer when it takes them.
        key: PRNG key of the context network (unused without a context).
        dtype: floating type of the parameters (``None``: JAX's default; see "Precision" in
            :mod:`numpyroflows.transforms.base`).

    Parameters: ``"head.params"`` (``(D, num_params)``), or ``"head.net.*"`` with a context.

    Example:
        >>> t = ElementwiseTransform(3, "spline", count_bins=8)
        >>> y, ladj = t.forward_and_log_det(jnp.ones((10, 3)))
    """

    def __init__(
        self,
        input_dim: int,
        transformer: str | Transformer = "spline",
        context_dim: int = 0,
        hidden_dims: Sequence[int] = (64, 64),
        count_bins: int = 8,
        bound: float = 5.0,
        *,
        key: Array | None = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(input_dim, context_dim)
        self.transformer = make_transformer(transformer, count_bins=count_bins, bound=bound)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        p = self.transformer.num_params
        init = np.broadcast_to(np.asarray(self.transformer.identity_params(), np.float64), (self.input_dim, p))
        head = param_head_init(default_key(key), {"params": init}, context_dim, self.hidden_dims, float_dtype(dtype))
        self.params = {f"head.{k}": v for k, v in head.items()}

    def _theta(self, params: dict, context: Array | None) -> Array:
        return _head_apply(params, "params", (self.input_dim, self.transformer.num_params), context)

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        y, ld = self.transformer.inverse(x, self._theta(params, context))
        return y, ld.sum(-1)

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        x, ld = self.transformer.forward(y, self._theta(params, context))
        return x, ld.sum(-1)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(input_dim={self.input_dim}, context_dim={self.context_dim}, "
                f"transformer={self.transformer!r})")


# ------------------------------------------------------------------------------------------ fixed nonlinearities

#: floor of the LeakyReLU negative-side slope (keeps its log and the inverse finite).
MIN_SLOPE = 1e-4


class LeakyReLU(FlowTransform):
    """Leaky ReLU with a learnable positive negative-side slope per dimension.

    ``y = x`` for ``x ≥ 0`` and ``slope ⊙ x`` otherwise, ``slope = 1e-4 + softplus(raw)`` (starts at ``init_slope``);
    ``log|det| = Σ_{x_i < 0} log slope_i``; the slope floor ``MIN_SLOPE = 1e-4`` keeps the log and the inverse
    finite.

    Args:
        input_dim: D.
        context_dim: size of the context (0: free slopes).
        hidden_dims: hidden widths of the context network.
        init_slope: initial slope (> 1e-4).
        key: PRNG key of the context network (unused without a context).
        dtype: floating type of the parameters (``None``: JAX's default; see "Precision" in
            :mod:`numpyroflows.transforms.base`).

    Parameters: ``"head.raw_slope"`` (``(D,)``), or ``"head.net.*"`` with a context.

    Example:
        >>> t = LeakyReLU(3, init_slope=0.2)
        >>> y, ladj = t.forward_and_log_det(jnp.ones((10, 3)))

    Reference: Papamakarios et al. (2021), "Normalizing Flows for Probabilistic Modeling and Inference".
    """

    def __init__(self, input_dim: int, context_dim: int = 0, hidden_dims: Sequence[int] = (64, 64),
                 init_slope: float = 0.5, *, key: Array | None = None, dtype: Any = None) -> None:
        super().__init__(input_dim, context_dim)
        if not float(init_slope) > MIN_SLOPE:
            raise ValueError(f"init_slope must be a positive number above {MIN_SLOPE}, got {init_slope}")
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        raw = math.log(math.expm1(float(init_slope) - MIN_SLOPE))
        head = param_head_init(default_key(key), {"raw_slope": np.full((self.input_dim,), raw)}, context_dim,
                               self.hidden_dims, float_dtype(dtype))
        self.params = {f"head.{k}": v for k, v in head.items()}

    def _slope(self, params: dict, context: Array | None) -> Array:
        raw = _head_apply(params, "raw_slope", (self.input_dim,), context)
        return MIN_SLOPE + _softplus(raw)

    def slope(self, context: Array | None = None) -> Array:
        """The negative-side slopes (``(D,)``, or batched with a context)."""
        return self._slope(self.params, context)

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        return F_lin.leaky_relu_forward(x, self._slope(params, context))

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        return F_lin.leaky_relu_inverse(y, self._slope(params, context))


def _check_open_interval(y: Array, low: float, high: float, where: str, fix: str) -> None:
    """Reject concrete values outside ``(low, high)`` (skipped under tracing and when validation is off)."""
    if not _checks._VALIDATE or isinstance(y, jax.core.Tracer):
        return
    try:
        ok = bool(jnp.all((y > low) & (y < high)))
    except jax.errors.ConcretizationTypeError:  # inside jit, even constants are staged
        return
    if not ok:
        raise ValueError(
            f"{where}: the inverse needs every value strictly inside ({low:g}, {high:g}), got values in "
            f"[{float(jnp.min(y)):.6g}, {float(jnp.max(y)):.6g}]: {fix} (or call numpyroflows.set_validation(False) "
            "to clamp such values into the interval instead)"
        )


class Sigmoid(FlowTransform):
    """The logistic sigmoid, mapping R^D onto the open unit cube.

    ``y = σ(x)``, ``log|det| = Σ (-softplus(-x) - softplus(x))``; inverse ``x = logit(y)``. Outputs are clamped to
    the representable open interval so far inputs stay finite. The inverse rejects concrete values outside ``(0, 1)``
    with a ``ValueError`` naming the fix (skipped under ``jax.jit`` and with ``numpyroflows.set_validation(False)``,
    where such values are clamped into the interval). No parameters, no context; ``key`` and ``dtype`` are accepted
    (for a uniform constructor signature) and unused.

    Reference: Dinh et al. (2017), "Density estimation using Real NVP" (the logit transform of bounded data).
    """

    def __init__(self, input_dim: int, *, key: Array | None = None, dtype: Any = None) -> None:
        super().__init__(input_dim, 0)  # no parameters: key and dtype are accepted for a uniform signature
        float_dtype(dtype)

    @property
    def codomain(self):
        return constraints.independent(constraints.unit_interval, 1)

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        return F_lin.sigmoid_forward(x)

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        _check_open_interval(
            y, 0.0, 1.0, "Sigmoid", "rescale the data into (0, 1) first, e.g. (y - low) / (high - low) with a margin"
        )
        return F_lin.sigmoid_inverse(y)


class Tanh(FlowTransform):
    """The hyperbolic tangent, mapping R^D onto the open cube (-1, 1)^D.

    ``y = tanh(x)``, ``log|det| = Σ 2 (log 2 - x - softplus(-2x))`` (stable); inverse ``x = atanh(y)``. Outputs are
    clamped to the representable open interval so far inputs stay finite. The inverse rejects concrete values outside
    ``(-1, 1)`` as :class:`Sigmoid`'s does. No parameters, no context; ``key`` and ``dtype`` are accepted and
    unused.
    """

    def __init__(self, input_dim: int, *, key: Array | None = None, dtype: Any = None) -> None:
        super().__init__(input_dim, 0)  # no parameters: key and dtype are accepted for a uniform signature
        float_dtype(dtype)

    @property
    def codomain(self):
        return constraints.independent(constraints.interval(-1.0, 1.0), 1)

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        return F_lin.tanh_forward(x)

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        fix = "rescale the data into (-1, 1) first, e.g. 2 (y - low) / (high - low) - 1 with a margin"
        _check_open_interval(y, -1.0, 1.0, "Tanh", fix)
        return F_lin.tanh_inverse(y)
