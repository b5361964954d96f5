"""Named flows in JAX, with the arguments and defaults of :mod:`pyroflows.flows.recipes` (plus a PRNG ``key``)."""

from __future__ import annotations

from collections.abc import Sequence

import jax

from ..transforms.autoregressive import AutoregressiveTransform
from ..transforms.base import default_key
from ..transforms.transformers import Transformer
from .core import Flow

Array = jax.Array


def _orders(i: int) -> str:
    return "ascending" if i % 2 == 0 else "descending"


class MAF(Flow):
    """Masked autoregressive flow (Papamakarios et al. 2017): density in one pass per layer, sampling in ``D``."""

    _orientation = "maf"

    def __init__(
        self,
        input_dim: int,
        context_dim: int = 0,
        num_transforms: int = 5,
        hidden_dims: Sequence[int] = (64, 64),
        transformer: str | Transformer = "affine",
        count_bins: int = 8,
        bound: float = 5.0,
        activation: str = "relu",
        *,
        key: Array | None = None,
    ) -> None:
        keys = jax.random.split(default_key(key), num_transforms)
        super().__init__([
            AutoregressiveTransform(input_dim, transformer, context_dim, hidden_dims, self._orientation, _orders(i),
                                    activation, count_bins, bound, key=keys[i])
            for i in range(num_transforms)
        ])


class IAF(MAF):
    """Inverse autoregressive flow (Kingma et al. 2016): sampling in one pass per layer, density of data in ``D``."""

    _orientation = "iaf"


class NSF(Flow):
    """Neural spline flow, autoregressive (Durkan et al. 2019): MAF with rational-quadratic splines."""

    def __init__(
        self,
        input_dim: int,
        context_dim: int = 0,
        num_transforms: int = 5,
        hidden_dims: Sequence[int] = (64, 64),
        count_bins: int = 8,
        bound: float = 5.0,
        activation: str = "relu",
        *,
        key: Array | None = None,
    ) -> None:
        keys = jax.random.split(default_key(key), num_transforms)
        super().__init__([
            AutoregressiveTransform(input_dim, "spline", context_dim, hidden_dims, "maf", _orders(i), activation,
                                    count_bins, bound, key=keys[i])
            for i in range(num_transforms)
        ])
