"""Autoregressive flows with any transformer, conditioned by MADE, in both orientations.

Each dimension is mapped by a transformer ``τ`` whose parameters ``θ_i`` are a function of the dimensions before
``i`` in the order (and of the context). With ``x`` the noise (base) side and ``y`` the data side:

* ``orientation="maf"`` (density-fast; Papamakarios et al. 2017, "Masked Autoregressive Flow"):
  ``x_i = τ(y_i; θ_i(y_{<i}))``, ``θ = MADE(y)`` from the data side. The inverse ``y -> x`` (density evaluation)
  takes one network pass and evaluates ``τ`` forward (for the affine transformer ``x = shift + scale·y``); the forward
  ``x -> y`` (sampling) takes ``D`` passes through ``τ⁻¹``.
* ``orientation="iaf"`` (sampling-fast; Kingma et al. 2016, "Improved Variational Inference with Inverse
  Autoregressive Flow"): ``y_i = τ(x_i; θ_i(x_{<i}))``, ``θ = MADE(x)`` from the noise side. Sampling (and the
  density of the flow's own samples) takes one pass through ``τ``; the density of fresh data takes ``D`` passes.

Both directions are exact. The slow direction determines one dimension per pass, in autoregressive order, computing
only that dimension's rows of MADE's output layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..nn.made import MADE
from ..nn.mlp import OUTPUT_INIT
from .base import FlowTransform
from .transformers import Transformer, make_transformer

Tensor = torch.Tensor


class AutoregressiveTransform(FlowTransform):
    """An autoregressive bijection with a MADE conditioner: ``y_i = τ(x_i; θ_i(x_{<i}, context))`` (IAF) or
    ``x_i = τ(y_i; θ_i(y_{<i}, context))`` (MAF).

    Args:
        input_dim: D.
        transformer: ``"affine"``, ``"additive"``, ``"spline"``, ``"bspline"``, ``"mixture"`` or an instance.
        context_dim: size of the context (0: none).
        hidden_dims: MADE hidden widths.
        orientation: ``"maf"`` (density-fast) or ``"iaf"`` (sampling-fast).
        order: ``"ascending"``, ``"descending"`` or a permutation listing the dimensions first to last.
        activation: MADE hidden nonlinearity.
        count_bins, bound: spline options, passed to the transformer when it takes them.
        output_init: half-width of the uniform start of MADE's output weights (its bias starts at the transformer's
            identity), or ``"fan_in"`` for ``±1/sqrt(hidden_dims[-1])``. The default ``1e-3`` starts the layer
            within about ``1e-3`` of the identity, which a guide or an encoder needs; ``"fan_in"`` (zuko's and
            FlowJAX's start) helped affine MAFs fitted by maximum likelihood and hurt spline ones (see
            :func:`pyroflows.nn.mlp.output_init_bound`).

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
        output_init: float | str = OUTPUT_INIT,
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
            output_init=output_init,
        )
        self.register_buffer("_onehot", torch.eye(input_dim, dtype=torch.bool), persistent=False)

    # one pass: parameters from the known side, transformer evaluated forward
    def _one_pass(self, known: Tensor, context: Tensor | None):
        out, ld = self.transformer.forward(known, self.made(known, context))
        return out, ld.sum(-1)

    # D passes: parameters from the side being computed, transformer inverted
    def _sequential(self, given: Tensor, context: Tensor | None):
        fn = self.transformer.inverse
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
            return self._one_pass(x, context)
        return self._sequential(x, context)

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.orientation == "maf":
            return self._one_pass(y, context)
        return self._sequential(y, context)

    def _log_abs_det(self, x: Tensor, y: Tensor, context: Tensor | None) -> Tensor:
        # one pass from whichever side feeds the conditioner
        if self.orientation == "maf":
            return -self._one_pass(y, context)[1]
        return self._one_pass(x, context)[1]

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
        output_init: float | str = OUTPUT_INIT,
    ) -> None:
        super().__init__(input_dim, transformer, context_dim, hidden_dims, "maf", order, activation, count_bins, bound,
                         output_init)


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
        output_init: float | str = OUTPUT_INIT,
    ) -> None:
        super().__init__(input_dim, transformer, context_dim, hidden_dims, "iaf", order, activation, count_bins, bound,
                         output_init)
