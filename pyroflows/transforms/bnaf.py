"""Block neural autoregressive flow (De Cao, Titov & Aziz 2019), with an inverse that works on fresh data."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..functional import bnaf as F_bnaf
from .base import FlowTransform

Tensor = torch.Tensor


class BlockNAFTransform(FlowTransform):
    """Block neural autoregressive flow: a monotone, autoregressive neural network ``f`` as a bijection.

    With ``orientation="iaf"`` (sampling-fast) the transform is ``y = f(x)``; with ``orientation="maf"``
    (density-fast, the paper's density-estimation setting) it is ``y = f⁻¹(x)``, i.e. the network maps data to noise
    and ``log_prob`` takes one network pass while sampling solves the monotone equations.

    ``f`` alternates masked block lower-triangular linear layers (diagonal blocks positive, weight-normalised rows)
    with strictly increasing activations, so ``y_i`` depends on ``x_{≤i}`` (and the context) only and
    ``∂y_i/∂x_i > 0``; ``log|det| = Σ_i log ∂y_i/∂x_i`` is accumulated per block in log space. Sizes per layer:
    ``D → D·hidden_factor → … → D``. The inverse solves one scalar monotone equation per coordinate, in order, by
    bisection, then takes a differentiable Newton step; it inverts any ``y`` (see :mod:`pyroflows.functional.bnaf`).

    Args:
        input_dim: D.
        context_dim: size of the context (0: none). The context enters the first layer's pre-activations through
            an unmasked linear map, so ``y_i`` depends on ``(x_{≤i}, context)``.
        hidden_factor: hidden units per dimension (``a`` in the paper).
        num_layers: number of hidden layers (each a masked block linear layer followed by the activation); a last
            masked layer maps back to ``D``, so there are ``num_layers + 1`` linear layers.
        activation: ``"tanh"`` (the paper) or ``"leaky_tanh"`` (``tanh(u) + 0.1 u``).
        orientation: ``"iaf"`` (network on the noise side) or ``"maf"`` (network on the data side).
        residual: ``None`` (``y = f(x) + 0.01 x``: the small linear leak makes the map onto ``R^D``), ``"normal"``
            (``y = x + f(x)``) or ``"gated"`` (``y = σ(g) x + (1 - σ(g)) f(x)``, one learnable ``g`` per dimension).

    Initialisation: raw entries of the diagonal and strictly-lower blocks are Xavier-uniform per block row (fan-in
    ``(i + 1) a_in``, fan-out ``a_out``; diagonal entries enter through ``exp``, so they start near 1), every row is
    then normalised to norm ``exp(log_scale) = 1``, biases are zero, the gate starts at ``g = 0`` and the context
    weights use PyTorch's default linear initialisation. Unit-norm rows keep the pre-activations of order one for
    standardised inputs, which keeps training stable (this is not an identity initialisation).

    Example:
        >>> t = BlockNAFTransform(3, hidden_factor=4)
        >>> x = torch.randn(10, 3)
        >>> y, ladj = t.forward_and_log_det(x)
        >>> x2, iladj = t.inverse_and_log_det(y)

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
    ) -> None:
        super().__init__(input_dim, context_dim)
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
        sizes = [1] + [self.hidden_factor] * self.num_layers + [1]
        self.raw_weights = nn.ParameterList()
        self.log_scales = nn.ParameterList()
        self.biases = nn.ParameterList()
        for idx, (a_in, a_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            diag, lower = F_bnaf.block_masks(dim, a_out, a_in)
            self.register_buffer(f"diag_mask_{idx}", diag, persistent=False)
            self.register_buffer(f"lower_mask_{idx}", lower, persistent=False)
            raw = torch.zeros(dim * a_out, dim * a_in)
            for i in range(dim):
                bound = math.sqrt(6.0 / ((i + 1) * a_in + a_out))
                raw[i * a_out : (i + 1) * a_out, : (i + 1) * a_in].uniform_(-bound, bound)
            self.raw_weights.append(nn.Parameter(raw))
            self.log_scales.append(nn.Parameter(torch.zeros(dim * a_out)))
            self.biases.append(nn.Parameter(torch.zeros(dim * a_out)))
        self.context_layer = nn.Linear(self.context_dim, dim * self.hidden_factor, bias=False) if context_dim else None
        self.gate = nn.Parameter(torch.zeros(dim)) if residual == "gated" else None

    def _layers(self) -> list[F_bnaf.Layer]:
        out = []
        for idx, (raw, log_scale, bias) in enumerate(zip(self.raw_weights, self.log_scales, self.biases)):
            diag, lower = getattr(self, f"diag_mask_{idx}"), getattr(self, f"lower_mask_{idx}")
            w, log_diag = F_bnaf.masked_block_weight(raw, log_scale, diag, lower, self.input_dim)
            out.append((w, log_diag, bias))
        return out

    def _context_shift(self, context: Tensor | None) -> Tensor | None:
        if self.context_layer is None or context is None:
            return None
        return self.context_layer(context)

    def _network(self, v: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        out, ld = F_bnaf.bnaf_forward(
            v, self._layers(), self.activation, self.residual, self.gate, self._context_shift(context)
        )
        return out, ld.sum(-1)

    def _network_inverse(self, v: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        out, ld = F_bnaf.bnaf_inverse(
            v, self._layers(), self.activation, self.residual, self.gate, self._context_shift(context)
        )
        return out, ld.sum(-1)

    def _forward_ld(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.orientation == "iaf":
            return self._network(x, context)
        return self._network_inverse(x, context)

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.orientation == "iaf":
            return self._network_inverse(y, context)
        return self._network(y, context)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, hidden_factor={self.hidden_factor}, num_layers={self.num_layers}, "
            f"activation={self.activation!r}, residual={self.residual!r}, orientation={self.orientation!r}"
        )
