"""Named flows in JAX, with the arguments and defaults of :mod:`pyroflows.flows.recipes` (plus a PRNG ``key``),
``output_init`` included (``1e-3``: start near the base distribution; ``"fan_in"``: random output weights, see
:func:`pyroflows.nn.mlp.output_init_bound`)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from ..nn.mlp import OUTPUT_INIT
from ..transforms.autoregressive import AutoregressiveTransform
from ..transforms.base import default_key
from ..transforms.transformers import Transformer
from .core import Flow

Array = jax.Array


def _orders(i: int, input_dim: int, randperm: bool = False) -> str | tuple[int, ...]:
    """Layer ``i``'s variable order: reversed between layers (Papamakarios et al. 2017; cheaper than a permutation
    layer), or with ``randperm`` a random permutation for every layer after the first, drawn from
    ``numpy.random.default_rng(i)`` so that both packages build the same masks."""
    if randperm and i > 0:
        return tuple(np.random.default_rng(i).permutation(input_dim).tolist())
    return "ascending" if i % 2 == 0 else "descending"


class MAF(Flow):
    """Masked autoregressive flow (Papamakarios et al. 2017): density in one pass per layer, sampling in ``D``.
    Same arguments as :class:`pyroflows.flows.MAF` (``randperm`` included: the same orders), plus ``key``."""

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
        output_init: float | str = OUTPUT_INIT,
        randperm: bool = False,
        *,
        key: Array | None = None,
    ) -> None:
        keys = jax.random.split(default_key(key), num_transforms)
        super().__init__([
            AutoregressiveTransform(input_dim, transformer, context_dim, hidden_dims, self._orientation,
                                    _orders(i, input_dim, randperm), activation, count_bins, bound, output_init,
                                    key=keys[i])
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
        output_init: float | str = OUTPUT_INIT,
        randperm: bool = False,
        *,
        key: Array | None = None,
    ) -> None:
        keys = jax.random.split(default_key(key), num_transforms)
        super().__init__([
            AutoregressiveTransform(input_dim, "spline", context_dim, hidden_dims, "maf",
                                    _orders(i, input_dim, randperm), activation, count_bins, bound, output_init,
                                    key=keys[i])
            for i in range(num_transforms)
        ])


def _keys(key: Array | None, n: int):
    return jax.random.split(default_key(key), max(n, 1))


class Coupling(Flow):
    """Coupling flow with any transformer (RealNVP with ``"affine"``, NSF-C with ``"spline"``); masks alternate
    parity between layers. Same arguments as :class:`pyroflows.flows.Coupling`."""

    def __init__(
        self,
        input_dim: int,
        context_dim: int = 0,
        num_transforms: int = 5,
        hidden_dims: Sequence[int] = (64, 64),
        transformer: str | Transformer = "affine",
        mask: str = "half",
        count_bins: int = 8,
        bound: float = 5.0,
        activation: str = "relu",
        output_init: float | str = OUTPUT_INIT,
        *,
        key: Array | None = None,
    ) -> None:
        from ..transforms.coupling import CouplingTransform

        keys = _keys(key, num_transforms)
        super().__init__([
            CouplingTransform(input_dim, transformer, context_dim, hidden_dims, mask, i % 2, activation, count_bins,
                              bound, seed=i, output_init=output_init, key=keys[i])
            for i in range(num_transforms)
        ])


class RealNVP(Flow):
    """RealNVP (Dinh et al. 2017): affine coupling layers with alternating masks."""

    def __init__(
        self,
        input_dim: int,
        context_dim: int = 0,
        num_transforms: int = 5,
        hidden_dims: Sequence[int] = (64, 64),
        mask: str = "half",
        activation: str = "relu",
        output_init: float | str = OUTPUT_INIT,
        *,
        key: Array | None = None,
    ) -> None:
        from ..transforms.coupling import CouplingTransform

        keys = _keys(key, num_transforms)
        super().__init__([
            CouplingTransform(input_dim, "affine", context_dim, hidden_dims, mask, i % 2, activation, seed=i,
                              output_init=output_init, key=keys[i])
            for i in range(num_transforms)
        ])


class NICE(Flow):
    """NICE (Dinh et al. 2014): additive coupling layers followed by a diagonal scaling."""

    def __init__(
        self,
        input_dim: int,
        context_dim: int = 0,
        num_transforms: int = 4,
        hidden_dims: Sequence[int] = (64, 64),
        mask: str = "half",
        activation: str = "relu",
        output_init: float | str = OUTPUT_INIT,
        *,
        key: Array | None = None,
    ) -> None:
        from ..transforms.coupling import CouplingTransform
        from ..transforms.linear import DiagonalAffine

        keys = _keys(key, num_transforms + 1)
        layers = [
            CouplingTransform(input_dim, "additive", context_dim, hidden_dims, mask, i % 2, activation, seed=i,
                              output_init=output_init, key=keys[i])
            for i in range(num_transforms)
        ]
        super().__init__([*layers, DiagonalAffine(input_dim, context_dim, hidden_dims, key=keys[-1])])


class Elementwise(Flow):
    """An elementwise flow: ``num_transforms`` elementwise transformers (a spline by default)."""

    def __init__(
        self,
        input_dim: int,
        context_dim: int = 0,
        num_transforms: int = 1,
        hidden_dims: Sequence[int] = (64, 64),
        transformer: str | Transformer = "spline",
        count_bins: int = 8,
        bound: float = 5.0,
        *,
        key: Array | None = None,
    ) -> None:
        from ..transforms.elementwise import ElementwiseTransform

        keys = _keys(key, num_transforms)
        super().__init__([
            ElementwiseTransform(input_dim, transformer, context_dim, hidden_dims, count_bins, bound, key=keys[i])
            for i in range(num_transforms)
        ])


class BNAF(Flow):
    """Block neural autoregressive flow (De Cao et al. 2019), reversed order between layers, gated residual."""

    def __init__(
        self,
        input_dim: int,
        context_dim: int = 0,
        num_transforms: int = 1,
        hidden_factor: int = 8,
        num_layers: int = 2,
        activation: str = "tanh",
        residual: str | None = "gated",
        orientation: str = "maf",
        *,
        key: Array | None = None,
    ) -> None:
        from ..transforms.bnaf import BlockNAFTransform
        from ..transforms.linear import Permutation

        keys = _keys(key, num_transforms)
        layers: list = []
        for i in range(num_transforms):
            if i > 0:
                layers.append(Permutation(input_dim, kind="reverse"))
            layers.append(BlockNAFTransform(input_dim, context_dim, hidden_factor, num_layers, activation, residual,
                                            orientation, key=keys[i]))
        super().__init__(layers)


class Planar(Flow):
    """Planar flow (Rezende & Mohamed 2015), with an exact inverse of fresh data."""

    def __init__(self, input_dim: int, context_dim: int = 0, num_transforms: int = 8,
                 hidden_dims: Sequence[int] = (64, 64), *, key: Array | None = None) -> None:
        from ..transforms.planar import PlanarTransform

        keys = _keys(key, num_transforms)
        super().__init__([PlanarTransform(input_dim, context_dim, hidden_dims, key=keys[i])
                          for i in range(num_transforms)])


class Radial(Flow):
    """Radial flow (Rezende & Mohamed 2015), with a closed-form inverse."""

    def __init__(self, input_dim: int, context_dim: int = 0, num_transforms: int = 8,
                 hidden_dims: Sequence[int] = (64, 64), *, key: Array | None = None) -> None:
        from ..transforms.radial import RadialTransform

        keys = _keys(key, num_transforms)
        super().__init__([RadialTransform(input_dim, context_dim, hidden_dims, key=keys[i])
                          for i in range(num_transforms)])


class Sylvester(Flow):
    """Sylvester flow (van den Berg et al. 2018) with Householder or orthogonal ``Q``."""

    def __init__(
        self,
        input_dim: int,
        context_dim: int = 0,
        num_transforms: int = 4,
        hidden_dims: Sequence[int] = (64, 64),
        num_ortho: int | None = None,
        q_type: str = "householder",
        num_householder: int | None = None,
        *,
        key: Array | None = None,
    ) -> None:
        from ..transforms.sylvester import SylvesterTransform

        keys = _keys(key, num_transforms)
        super().__init__([
            SylvesterTransform(input_dim, context_dim, hidden_dims, num_ortho, q_type, num_householder, key=keys[i])
            for i in range(num_transforms)
        ])
