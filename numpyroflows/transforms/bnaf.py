"""Block neural autoregressive flow (De Cao, Titov & Aziz 2019) in JAX, with an inverse that works on fresh data.

:class:`BlockNAFTransform` holds the parameters; the math (masked weight-normalised blocks, the log-space
log-determinant, the bisection-plus-Newton inverse) is in :mod:`numpyroflows.functional.bnaf`. Arguments, parameter
names, initialisation scheme and math are those of ``pyroflows.transforms.BlockNAFTransform``, so parameters move
between the packages by name.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._dtype import float_dtype, uniform
from ..functional import bnaf as F_bnaf
from ..nn.mlp import linear_init
from .base import FlowTransform, default_key

Array = jax.Array


class BlockNAFTransform(FlowTransform):
    """Block neural autoregressive flow: a monotone, autoregressive neural network ``f`` as a bijection.

    ``orientation="iaf"`` (sampling-fast): ``y = f(x)``; ``orientation="maf"`` (density-fast, the paper's setting):
    ``y = f⁻¹(x)``, so ``log_prob`` takes one network pass and sampling solves the monotone equations (bisection per
    coordinate, then a differentiable Newton step; exact for any input). Layers ``D → D·hidden_factor → … → D`` of
    masked, weight-normalised block lower-triangular matrices with positive diagonal blocks, ``tanh`` or
    ``leaky_tanh`` activations, and a residual ``None`` (``f(x) + 0.01 x``), ``"normal"`` or ``"gated"``; a context
    enters the first pre-activations through an unmasked linear map.

    ``f`` alternates masked block lower-triangular linear layers with strictly increasing activations, so ``y_i``
    depends on ``x_{≤i}`` (and the context) only and ``∂y_i/∂x_i > 0``; ``log|det| = Σ_i log ∂y_i/∂x_i`` is
    accumulated per block in log space.

    Args:
        input_dim: D.
        context_dim: size of the context (0: none). The context enters the first layer's pre-activations through
            an unmasked linear map, so ``y_i`` depends on ``(x_{≤i}, context)``.
        hidden_factor: hidden units per dimension (``a`` in the paper).
        num_layers: number of hidden layers (each a masked block linear layer followed by the activation); a last
            masked layer maps back to ``D``, so there are ``num_layers + 1`` linear layers.
        activation: ``"tanh"`` (the paper) or ``"leaky_tanh"`` (``tanh(u) + 0.1 u``).
        residual: ``None`` (``y = f(x) + 0.01 x``: the small linear leak makes the map onto ``R^D``), ``"normal"``
            (``y = x + f(x)``) or ``"gated"`` (``y = σ(g) x + (1 - σ(g)) f(x)``, one learnable ``g`` per dimension).
        orientation: ``"iaf"`` (network on the noise side) or ``"maf"`` (network on the data side).
        key: PRNG key of the initial parameters (``PRNGKey(0)`` if None).
        dtype: floating type of the parameters (``None``: JAX's default; see "Precision" in
            :mod:`numpyroflows.transforms.base`).

    Parameters: ``raw_weights.{l}`` ``(D·a_out, D·a_in)``, ``log_scales.{l}`` and ``biases.{l}`` ``(D·a_out,)`` for
    ``l = 0 … num_layers``, ``context_layer.weight`` ``(D·hidden_factor, context_dim)`` with a context, ``gate``
    ``(D,)`` with the gated residual.

    Initialisation: raw entries of block row ``i`` Xavier-uniform with fan-in ``(i + 1) a_in`` and fan-out ``a_out``
    (zero above the diagonal blocks; diagonal entries enter through ``exp``, so they start near 1), log row norms,
    biases and gate 0, context weights uniform in ``±1/sqrt(context_dim)`` (PyTorch's linear default). Unit-norm rows
    keep the pre-activations of order one for standardised inputs, which keeps training stable (this is not an
    identity initialisation). The scheme is pyroflows'; the random numbers differ.

    Reference: N. De Cao, I. Titov, W. Aziz, "Block Neural Autoregressive Flow", UAI 2019.
    """

    def __init__(
        self,
        input_dim: int,
        context_dim: int = 0,
        hidden_factor: int = 8,
        num_layers: int = 2,
        activation: str = "tanh",
        residual: str | None = None,
        orientation: str = "iaf",
        *,
        key: Array | None = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(input_dim, context_dim)
        dtype = float_dtype(dtype)
        if orientation not in ("maf", "iaf"):
            raise ValueError(f"orientation must be 'maf' (density-fast) or 'iaf' (sampling-fast), got {orientation!r}")
        self.orientation = orientation
        if int(hidden_factor) < 1:
            raise ValueError(f"hidden_factor must be a positive integer, got {hidden_factor}")
        if int(num_layers) < 1:
            raise ValueError(f"num_layers (hidden layers) must be a positive integer, got {num_layers}")
        if activation not in F_bnaf.ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {F_bnaf.ACTIVATIONS}")
        if residual not in F_bnaf.RESIDUALS:
            raise ValueError(f"unknown residual {residual!r}; choose one of {F_bnaf.RESIDUALS}")
        self.hidden_factor, self.num_layers = int(hidden_factor), int(num_layers)
        self.activation, self.residual = activation, residual
        dim = self.input_dim
        sizes = (1,) + (self.hidden_factor,) * self.num_layers + (1,)
        self._sizes = sizes
        keys = jax.random.split(default_key(key), len(sizes))
        params: dict[str, Array] = {}
        for idx, (a_in, a_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            # block row i: uniform in ±bound_i on its first (i + 1) a_in columns (diagonal and lower blocks), 0 above
            rows = np.repeat(np.arange(dim), a_out)[:, None]
            cols = np.repeat(np.arange(dim), a_in)[None, :]
            bound = np.sqrt(6.0 / ((rows + 1) * a_in + a_out))
            u = np.asarray(uniform(keys[idx], (dim * a_out, dim * a_in), jnp.float32, -1.0, 1.0))
            params[f"raw_weights.{idx}"] = jnp.asarray(np.where(cols <= rows, u * bound, 0.0), dtype)
            params[f"log_scales.{idx}"] = jnp.zeros(dim * a_out, dtype)
            params[f"biases.{idx}"] = jnp.zeros(dim * a_out, dtype)
        if self.context_dim:
            w, _ = linear_init(keys[-1], self.context_dim, dim * self.hidden_factor, dtype)
            params["context_layer.weight"] = w
        if residual == "gated":
            params["gate"] = jnp.zeros(dim, dtype)
        self.params = params

    def _layers(self, params: dict) -> list[F_bnaf.Layer]:
        out = []
        dim = self.input_dim
        for idx, (a_in, a_out) in enumerate(zip(self._sizes[:-1], self._sizes[1:])):
            diag, lower = F_bnaf.block_masks(dim, a_out, a_in)
            w, log_diag = F_bnaf.masked_block_weight(params[f"raw_weights.{idx}"], params[f"log_scales.{idx}"],
                                                     diag, lower, dim)
            out.append((w, log_diag, params[f"biases.{idx}"]))
        return out

    def _context_shift(self, params: dict, context: Array | None) -> Array | None:
        if not self.context_dim or context is None:
            return None
        return context @ params["context_layer.weight"].T

    def _network(self, params: dict, v: Array, context: Array | None) -> tuple[Array, Array]:
        out, ld = F_bnaf.bnaf_forward(v, self._layers(params), self.activation, self.residual, params.get("gate"),
                                      self._context_shift(params, context))
        return out, ld.sum(-1)

    def _network_inverse(self, params: dict, v: Array, context: Array | None) -> tuple[Array, Array]:
        out, ld = F_bnaf.bnaf_inverse(v, self._layers(params), self.activation, self.residual, params.get("gate"),
                                      self._context_shift(params, context))
        return out, ld.sum(-1)

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        if self.orientation == "iaf":
            return self._network(params, x, context)
        return self._network_inverse(params, x, context)

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        if self.orientation == "iaf":
            return self._network_inverse(params, y, context)
        return self._network(params, y, context)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(input_dim={self.input_dim}, context_dim={self.context_dim}, "
                f"hidden_factor={self.hidden_factor}, num_layers={self.num_layers}, activation={self.activation!r}, "
                f"residual={self.residual!r}, orientation={self.orientation!r})")

