"""Named flows in JAX: configurations of transforms with the defaults the papers found good.

Every recipe is a :class:`~numpyroflows.flows.core.Flow` subclass with a standard normal base, a keyword-only PRNG
``key`` for its initial parameters (``PRNGKey(0)`` if None) and a keyword-only ``dtype``, the floating type of every
parameter (``None``: JAX's default, float32 or, with ``jax_enable_x64``, float64; the rule is under "Precision" in
:mod:`numpyroflows.transforms.base`, and ``flow.astype(dtype)`` casts a built flow); calling it (with a context when
``context_dim > 0``) returns a NumPyro distribution. Arguments use Pyro's vocabulary: ``input_dim``,
``context_dim``, ``num_transforms``, ``hidden_dims``, ``count_bins``, ``bound``.

The MADE/MLP-conditioned recipes (:class:`MAF`, :class:`IAF`, :class:`NSF`, :class:`Coupling`, :class:`RealNVP`,
:class:`NICE`) also take ``output_init``, the start of the conditioners' output weights: the default ``1e-3`` starts
the flow within about ``1e-3`` of its base distribution (what a guide or a VAE encoder wants); ``"fan_in"``
(``±1/sqrt(width)``, as in ``torch.nn.Linear``, zuko and FlowJAX) is an option for density estimation (see
:func:`~numpyroflows.nn.mlp.output_init_bound` for when each start helps).

Arguments and defaults are those of ``pyroflows.flows`` (plus ``key`` and ``dtype``), and the flows have the same
parameter names, so a flow trained in one package loads in the other (:func:`numpyroflows.import_params`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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

    ``num_transforms`` MADE-conditioned autoregressive layers
    (:class:`~numpyroflows.transforms.AutoregressiveTransform`) with any transformer (``"affine"`` by default; with
    ``"spline"`` this is NSF), the order reversed between layers; ``randperm=True`` gives every layer after the first a
    random order instead (seeded, the same orders as pyroflows), as zuko's ``randperm`` and FlowJAX's permutations do,
    which helps in more than two dimensions. ``key`` is split into one key per layer.

    Example:
        >>> flow = MAF(input_dim=4, num_transforms=5, hidden_dims=(64, 64), key=jax.random.PRNGKey(0))
        >>> flow().log_prob(jnp.zeros((10, 4))).shape
        (10,)
    """

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
        dtype: Any = None,
    ) -> None:
        keys = jax.random.split(default_key(key), num_transforms)
        super().__init__([
            AutoregressiveTransform(input_dim, transformer, context_dim, hidden_dims, self._orientation,
                                    _orders(i, input_dim, randperm), activation, count_bins, bound, output_init,
                                    key=keys[i], dtype=dtype)
            for i in range(num_transforms)
        ])


class IAF(MAF):
    """Inverse autoregressive flow (Kingma et al. 2016): sampling and the density of its own samples in one pass
    per layer, the density of fresh data in ``D``. Same arguments as :class:`MAF`."""

    _orientation = "iaf"


class NSF(Flow):
    """Neural spline flow, autoregressive (Durkan et al. 2019): :class:`MAF` with rational-quadratic spline
    transformers of ``count_bins`` bins on ``[-bound, bound]`` and identity tails."""

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
        dtype: Any = None,
    ) -> None:
        keys = jax.random.split(default_key(key), num_transforms)
        super().__init__([
            AutoregressiveTransform(input_dim, "spline", context_dim, hidden_dims, "maf",
                                    _orders(i, input_dim, randperm), activation, count_bins, bound, output_init,
                                    key=keys[i], dtype=dtype)
            for i in range(num_transforms)
        ])


def _keys(key: Array | None, n: int):
    return jax.random.split(default_key(key), max(n, 1))


class Coupling(Flow):
    """Coupling flow with any transformer: ``"affine"`` is RealNVP (Dinh et al. 2017), ``"spline"`` NSF-C (Durkan et
    al. 2019), ``"additive"`` NICE without the final scaling. Masks alternate parity between layers (layer ``i`` draws
    a ``"random"`` mask from seed ``i``); both directions take one pass."""

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
        dtype: Any = None,
    ) -> None:
        from ..transforms.coupling import CouplingTransform

        keys = _keys(key, num_transforms)
        super().__init__([
            CouplingTransform(input_dim, transformer, context_dim, hidden_dims, mask, i % 2, activation, count_bins,
                              bound, seed=i, output_init=output_init, key=keys[i], dtype=dtype)
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
        dtype: Any = None,
    ) -> None:
        from ..transforms.coupling import CouplingTransform

        keys = _keys(key, num_transforms)
        super().__init__([
            CouplingTransform(input_dim, "affine", context_dim, hidden_dims, mask, i % 2, activation, seed=i,
                              output_init=output_init, key=keys[i], dtype=dtype)
            for i in range(num_transforms)
        ])


class NICE(Flow):
    """NICE (Dinh et al. 2014): additive (volume-preserving) coupling layers followed by a diagonal scaling, the only
    layer that changes volume."""

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
        dtype: Any = None,
    ) -> None:
        from ..transforms.coupling import CouplingTransform
        from ..transforms.linear import DiagonalAffine

        keys = _keys(key, num_transforms + 1)
        layers = [
            CouplingTransform(input_dim, "additive", context_dim, hidden_dims, mask, i % 2, activation, seed=i,
                              output_init=output_init, key=keys[i], dtype=dtype)
            for i in range(num_transforms)
        ]
        super().__init__([*layers, DiagonalAffine(input_dim, context_dim, hidden_dims, key=keys[-1], dtype=dtype)])


class Elementwise(Flow):
    """An elementwise flow: ``num_transforms`` elementwise transformers (a spline by default) with learned
    parameters, conditional on the context when ``context_dim > 0``."""

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
        dtype: Any = None,
    ) -> None:
        from ..transforms.elementwise import ElementwiseTransform

        keys = _keys(key, num_transforms)
        super().__init__([
            ElementwiseTransform(input_dim, transformer, context_dim, hidden_dims, count_bins, bound, key=keys[i],
                                 dtype=dtype)
            for i in range(num_transforms)
        ])


class BNAF(Flow):
    """Block neural autoregressive flow (De Cao et al. 2019): ``num_transforms`` BNAF layers with reversed
    dimension order between them. ``orientation="maf"`` (default) puts the network on the data side, so
    ``log_prob`` is one pass and sampling solves monotone equations; ``"iaf"`` the reverse (for variational
    inference). Both directions are exact on fresh data. The default gated residual ``σ(g)·x + (1-σ(g))·f(x)`` keeps
    every layer onto ``R^D`` with slope at least ``σ(g)``, so the density has no flat, far-reaching plateaus where the
    tanh network saturates."""

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
        dtype: Any = None,
    ) -> None:
        from ..transforms.bnaf import BlockNAFTransform
        from ..transforms.linear import Permutation

        keys = _keys(key, num_transforms)
        layers: list = []
        for i in range(num_transforms):
            if i > 0:
                layers.append(Permutation(input_dim, kind="reverse", dtype=dtype))
            layers.append(BlockNAFTransform(input_dim, context_dim, hidden_factor, num_layers, activation, residual,
                                            orientation, key=keys[i], dtype=dtype))
        super().__init__(layers)


class Planar(Flow):
    """Planar flow (Rezende & Mohamed 2015), with an exact inverse of fresh data."""

    def __init__(self, input_dim: int, context_dim: int = 0, num_transforms: int = 8,
                 hidden_dims: Sequence[int] = (64, 64), *, key: Array | None = None, dtype: Any = None) -> None:
        from ..transforms.planar import PlanarTransform

        keys = _keys(key, num_transforms)
        super().__init__([PlanarTransform(input_dim, context_dim, hidden_dims, key=keys[i], dtype=dtype)
                          for i in range(num_transforms)])


class Radial(Flow):
    """Radial flow (Rezende & Mohamed 2015), with a closed-form inverse."""

    def __init__(self, input_dim: int, context_dim: int = 0, num_transforms: int = 8,
                 hidden_dims: Sequence[int] = (64, 64), *, key: Array | None = None, dtype: Any = None) -> None:
        from ..transforms.radial import RadialTransform

        keys = _keys(key, num_transforms)
        super().__init__([RadialTransform(input_dim, context_dim, hidden_dims, key=keys[i], dtype=dtype)
                          for i in range(num_transforms)])


class Sylvester(Flow):
    """Sylvester flow (van den Berg et al. 2018) with Householder or orthogonal ``Q``, exact inverse of fresh data."""

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
        dtype: Any = None,
    ) -> None:
        from ..transforms.sylvester import SylvesterTransform

        keys = _keys(key, num_transforms)
        super().__init__([
            SylvesterTransform(input_dim, context_dim, hidden_dims, num_ortho, q_type, num_householder, key=keys[i],
                               dtype=dtype)
            for i in range(num_transforms)
        ])
