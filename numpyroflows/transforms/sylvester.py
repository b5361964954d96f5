"""Sylvester flows (Householder or orthogonal ``Q``) with an exact inverse (van den Berg et al. 2018), in JAX.

Mirrors :mod:`pyroflows.transforms.sylvester`: same constructor, parameter names (``head.householder`` or
``head.q_raw``, ``head.r_diag``, ``head.r_tilde_diag``, ``head.r_upper``, ``head.r_tilde_upper`` (when ``M > 1``),
``head.b``, or ``head.net.*`` with a context), shapes, initial distributions and math
(:mod:`numpyroflows.functional.sylvester`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np

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

    ``Q`` (``D×M``) has orthonormal columns (the first ``num_ortho`` columns of a product of ``num_householder``
    Householder reflections, or the sign-fixed reduced QR of a free ``D×M`` matrix), ``R``, ``R̃`` are upper
    triangular with diagonals ``tanh(ρ)``, ``tanh(ρ̃)``; the inverse back-substitutes and inverts any ``y``. With
    ``context_dim > 0`` every parameter comes from an MLP on the context.

    Same arguments as :class:`pyroflows.transforms.SylvesterTransform`, plus ``key`` (PRNG key for the initial
    values).
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
    ) -> None:
        super().__init__(input_dim, context_dim)
        d = self.input_dim
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
            return jax.random.uniform(next(keys), shape, minval=-bound, maxval=bound)

        init: dict[str, Array] = {}
        if q_type == "householder":
            init["householder"] = jax.random.normal(next(keys), (k, d))
        else:
            init["q_raw"] = jax.random.normal(next(keys), (d, m)) / math.sqrt(d)
        init["r_diag"] = uniform((m,))
        init["r_tilde_diag"] = uniform((m,))
        if m > 1:
            n_up = m * (m - 1) // 2
            init["r_upper"] = uniform((n_up,))
            init["r_tilde_upper"] = uniform((n_up,))
        init["b"] = uniform((m,))
        self.shapes = tuple((name, tuple(v.shape)) for name, v in init.items())
        head = param_head_init(next(keys), init, self.context_dim, self.hidden_dims)
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
