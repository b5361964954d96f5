"""Autoregressive flows with any transformer, conditioned by MADE, in both orientations.

``y_i = τ(x_i; θ_i)`` with ``θ_i`` a function of the dimensions before ``i`` in the order (and of the context).

* ``orientation="maf"`` (density-fast; Papamakarios et al. 2017, "Masked Autoregressive Flow"): ``θ = MADE(y)`` is
  computed from the data side. The inverse ``y -> x`` (density evaluation) takes one network pass; the forward
  ``x -> y`` (sampling) takes ``D`` passes.
* ``orientation="iaf"`` (sampling-fast; Kingma et al. 2016, "Improved Variational Inference with Inverse
  Autoregressive Flow"): ``θ = MADE(x)`` is computed from the noise side. Sampling (and the density of the flow's own
  samples) takes one pass; the density of fresh data takes ``D`` passes.

Both directions are exact. The slow direction determines one dimension per pass, in autoregressive order, computing
only that dimension's rows of MADE's output layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..nn.made import MADE
from .base import FlowTransform
from .transformers import Transformer, make_transformer

Tensor = torch.Tensor


class AutoregressiveTransform(FlowTransform):
    """An autoregressive bijection ``y_i = τ(x_i; θ_i(·_{<i}, context))`` with a MADE conditioner.

    Args:
        input_dim: D.
        transformer: ``"affine"``, ``"additive"``, ``"spline"``, ``"bspline"``, ``"mixture"`` or an instance.
        context_dim: size of the context (0: none).
        hidden_dims: MADE hidden widths.
        orientation: ``"maf"`` (density-fast) or ``"iaf"`` (sampling-fast).
        order: ``"ascending"``, ``"descending"`` or a permutation listing the dimensions first to last.
        activation: MADE hidden nonlinearity.
        count_bins, bound: spline options, passed to the transformer when it takes them.

    Example:
        >>> t = AutoregressiveTransform(4, "spline", orientation="maf")
        >>> x, ladj = t.inverse_and_log_det(torch.randn(100, 4))   # one pass
    """

    def __init__(
        self,
        input_dim: int,
        transformer: str | Transformer = "affine",
        context_dim: int = 0,
        hidden_dims: Sequence[int] = (64, 64),
        orientation: str = "maf",
        order: str | Sequence[int] = "ascending",
        activation: str = "relu",
        count_bins: int = 8,
        bound: float = 5.0,
    ) -> None:
        super().__init__(input_dim, context_dim)
        if orientation not in ("maf", "iaf"):
            raise ValueError(f"orientation must be 'maf' (density-fast) or 'iaf' (sampling-fast), got {orientation!r}")
        self.orientation = orientation
        self.transformer = make_transformer(transformer, count_bins=count_bins, bound=bound)
        self.made = MADE(
            input_dim,
            self.transformer.num_params,
            hidden_dims,
            context_dim=context_dim,
            activation=activation,
            order=order,
            output_bias=self.transformer.identity_params(),
        )
        self.register_buffer("_onehot", torch.eye(input_dim, dtype=torch.bool), persistent=False)

    # one pass: parameters from the known side
    def _one_pass(self, known: Tensor, other: Tensor, context: Tensor | None, forward: bool):
        params = self.made(known, context)
        out, ld = (self.transformer.forward if forward else self.transformer.inverse)(other, params)
        return out, ld.sum(-1)

    # D passes: parameters from the side being computed
    def _sequential(self, given: Tensor, context: Tensor | None, forward: bool):
        fn = self.transformer.forward if forward else self.transformer.inverse
        out = torch.zeros_like(given)
        total = None
        layers = self.made.layers()
        for dim in self.made.sequence:
            params = self.made.output(self.made.hidden(out, context, layers), dim, layers)
            value, ld = fn(given[..., dim : dim + 1], params)
            out = torch.where(self._onehot[dim], value, out)
            total = ld if total is None else total + ld
        return out, total.squeeze(-1)

    def _forward_ld(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.orientation == "iaf":
            return self._one_pass(x, x, context, forward=True)
        return self._sequential(x, context, forward=True)

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.orientation == "maf":
            return self._one_pass(y, y, context, forward=False)
        return self._sequential(y, context, forward=False)

    def _log_abs_det(self, x: Tensor, y: Tensor, context: Tensor | None) -> Tensor:
        # one pass from whichever side feeds the conditioner
        if self.orientation == "maf":
            return -self._one_pass(y, y, context, forward=False)[1]
        return self._one_pass(x, x, context, forward=True)[1]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, orientation={self.orientation!r}, transformer={self.transformer!r}"


class MaskedAutoregressiveTransform(AutoregressiveTransform):
    """:class:`AutoregressiveTransform` with ``orientation="maf"`` (density-fast)."""

    def __init__(
        self,
        input_dim: int,
        transformer: str | Transformer = "affine",
        context_dim: int = 0,
        hidden_dims: Sequence[int] = (64, 64),
        order: str | Sequence[int] = "ascending",
        activation: str = "relu",
        count_bins: int = 8,
        bound: float = 5.0,
    ) -> None:
        super().__init__(input_dim, transformer, context_dim, hidden_dims, "maf", order, activation, count_bins, bound)


class InverseAutoregressiveTransform(AutoregressiveTransform):
    """:class:`AutoregressiveTransform` with ``orientation="iaf"`` (sampling-fast)."""

    def __init__(
        self,
        input_dim: int,
        transformer: str | Transformer = "affine",
        context_dim: int = 0,
        hidden_dims: Sequence[int] = (64, 64),
        order: str | Sequence[int] = "ascending",
        activation: str = "relu",
        count_bins: int = 8,
        bound: float = 5.0,
    ) -> None:
        super().__init__(input_dim, transformer, context_dim, hidden_dims, "iaf", order, activation, count_bins, bound)
