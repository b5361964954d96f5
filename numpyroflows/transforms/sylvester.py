"""Sylvester flows (Householder or orthogonal ``Q``) with an exact inverse (van den Berg et al. 2018), in JAX.

:class:`SylvesterTransform` holds the parameters; the math is :mod:`numpyroflows.functional.sylvester`. Constructor,
parameter names, shapes and initial distributions are those of ``pyroflows.transforms.SylvesterTransform`` (plus a PRNG
``key``), so parameters move between the packages by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from .._dtype import float_dtype, normal
from .._dtype import uniform as _uniform
from ..functional.sylvester import (
    householder_product,
    orthonormal_columns,
    sylvester_diag,
    sylvester_forward,
    sylvester_inverse,
    upper_triangular,
)
from ..nn.params import head_params, param_head_init
from .base import FlowTransform, default_key

Array = jax.Array

Q_TYPES = ("householder", "orthogonal")


class SylvesterTransform(FlowTransform):
    """Sylvester flow ``y = x + Q R tanh(R̃ Qᵀx + b)``, invertible for every parameter value, with an exact inverse.

    ``Q`` (``D×M``) has orthonormal columns, ``R``, ``R̃`` are upper triangular ``M×M`` and ``b ∈ R^M``;
    ``log|det| = Σ_i log|1 + r_ii r̃_ii tanh'(a_i)|`` with ``a = R̃ Qᵀx + b``. The diagonals are the paper's choice
    ``r_ii = tanh(ρ_i)``, ``r̃_ii = tanh(ρ̃_i)`` of free ``ρ, ρ̃``: then ``|r_ii r̃_ii| < 1``, so
    ``1 + r_ii r̃_ii tanh'(·) > 0`` for every argument (``0 < tanh' ≤ 1``) and the map is invertible (theorem 2). The
    strictly-upper entries are free. The inverse solves ``v + R tanh(R̃ v + b) = Qᵀy`` for ``v = Qᵀx`` by
    back-substitution (one scalar monotone equation per component, bisection + Newton, in a ``lax.fori_loop``) and
    inverts any ``y``.

    ``q_type``:

    * ``"householder"``: ``Q`` is the product of ``num_householder`` (default ``D``) Householder reflections
      ``I - 2vvᵀ/‖v‖²`` of free vectors ``v`` (a full ``D×D`` orthogonal matrix; ``M = D`` by default, or its first
      ``num_ortho`` columns).
    * ``"orthogonal"``: ``Q`` is the Gram-Schmidt orthonormalisation (sign-fixed reduced QR, exact, unlike the
      paper's iterative Björck procedure) of a free ``D×M`` matrix, ``M = num_ortho ≤ D`` (default ``D``); the
      ``D - M`` directions orthogonal to ``Q`` pass unchanged.

    With ``context_dim > 0`` every parameter (``Q``'s vectors/matrix, ``R``, ``R̃``, ``b``) is produced from the
    context by an MLP, as in the amortized VAE flows of the paper.

    Args:
        input_dim: D.
        context_dim: size of the context (0: free parameters).
        hidden_dims: hidden widths of the context network.
        num_ortho: M, the number of orthonormal columns of ``Q`` (default D).
        q_type: ``"householder"`` or ``"orthogonal"``.
        num_householder: number of Householder reflections (default D; ``"householder"`` only).
        key: PRNG key of the initial values and of the context network.
        dtype: floating type of the parameters (``None``: JAX's default; see "Precision" in
            :mod:`numpyroflows.transforms.base`).

    Parameters: ``head.householder`` ``(K, D)`` or ``head.q_raw`` ``(D, M)``, ``head.r_diag``, ``head.r_tilde_diag``
    and ``head.b`` ``(M,)``, ``head.r_upper``, ``head.r_tilde_upper`` ``(M(M-1)/2,)`` (when ``M > 1``), or
    ``head.net.*`` with a context.

    Example:
        >>> t = SylvesterTransform(4, q_type="orthogonal", num_ortho=2, key=jax.random.PRNGKey(0))
        >>> y, ladj = t.forward_and_log_det(jnp.ones((10, 4)))
        >>> x, _ = t.inverse_and_log_det(y)

    Reference: van den Berg, Hasenclever, Tomczak & Welling 2018, "Sylvester Normalizing Flows for Variational
    Inference".
    """

    def __init__(
        self,
        input_dim: int,
        context_dim: int = 0,
        hidden_dims: Sequence[int] = (64, 64),
        num_ortho: int | None = None,
        q_type: str = "householder",
        num_householder: int | None = None,
        *,
        key: Array | None = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(input_dim, context_dim)
        d, dtype = self.input_dim, float_dtype(dtype)
        if q_type not in Q_TYPES:
            raise ValueError(f"unknown q_type {q_type!r}; choose one of {Q_TYPES}")
        m = d if num_ortho is None else int(num_ortho)
        if not 1 <= m <= d:
            raise ValueError(f"num_ortho must be between 1 and input_dim={d}, got {num_ortho}")
        k = d if num_householder is None else int(num_householder)
        if q_type == "householder" and k < 1:
            raise ValueError(f"num_householder must be a positive integer, got {num_householder}")
        if q_type == "orthogonal" and num_householder is not None:
            raise ValueError("num_householder only applies to q_type='householder'")
        self.q_type, self.num_ortho = q_type, m
        self.num_householder = k if q_type == "householder" else 0
        self.hidden_dims = tuple(int(h) for h in hidden_dims)

        bound = 1.0 / math.sqrt(m)
        keys = iter(jax.random.split(default_key(key), 8))

        def uniform(shape: tuple[int, ...]) -> Array:
            return _uniform(next(keys), shape, dtype, -bound, bound)

        init: dict[str, Array] = {}
        if q_type == "householder":
            init["householder"] = normal(next(keys), (k, d), dtype)
        else:
            init["q_raw"] = normal(next(keys), (d, m), dtype) / math.sqrt(d)
        init["r_diag"] = uniform((m,))
        init["r_tilde_diag"] = uniform((m,))
        if m > 1:
            n_up = m * (m - 1) // 2
            init["r_upper"] = uniform((n_up,))
            init["r_tilde_upper"] = uniform((n_up,))
        init["b"] = uniform((m,))
        self.shapes = tuple((name, tuple(v.shape)) for name, v in init.items())
        head = param_head_init(next(keys), init, self.context_dim, self.hidden_dims, dtype)
        self.params = {f"head.{n}": v for n, v in head.items()}

    def _params(self, params: dict, context: Array | None) -> tuple[Array, Array, Array, Array]:
        p = head_params(params, self.shapes, context)
        m = self.num_ortho
        if self.q_type == "householder":
            q = householder_product(p["householder"])[..., : m]
        else:
            q = orthonormal_columns(p["q_raw"])
        iu = np.triu_indices(m, 1)
        index = iu[0] * m + iu[1]
        r = upper_triangular(sylvester_diag(p["r_diag"]), p.get("r_upper"), index)
        r_tilde = upper_triangular(sylvester_diag(p["r_tilde_diag"]), p.get("r_tilde_upper"), index)
        return q, r, r_tilde, p["b"]

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        return sylvester_forward(x, *self._params(params, context))

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        return sylvester_inverse(y, *self._params(params, context))

    def __repr__(self) -> str:
        extra = f", num_householder={self.num_householder}" if self.q_type == "householder" else ""
        return (f"{type(self).__name__}(input_dim={self.input_dim}, context_dim={self.context_dim}, "
                f"num_ortho={self.num_ortho}, q_type={self.q_type!r}{extra})")
