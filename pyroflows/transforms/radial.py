"""Radial flow with a closed-form inverse (Rezende & Mohamed 2015)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..functional.radial import radial_forward, radial_inverse
from ..nn.params import ParamHead
from .base import FlowTransform

Tensor = torch.Tensor


class RadialTransform(FlowTransform):
    """Radial flow ``y = x + β (x - x₀)/(α + ‖x - x₀‖)``, invertible for every parameter value, closed-form inverse.

    ``α = softplus(raw_α) > 0`` and ``β = -α + softplus(raw_β) ≥ -α`` (appendix A of the paper);
    ``log|det| = (D-1) log(1 + βh) + log(1 + βh + βh'r)`` with ``h = 1/(α + r)``. The inverse takes ``r`` from the
    positive root of ``r² + (α + β - ‖y - x₀‖) r - α‖y - x₀‖ = 0`` and rescales ``y - x₀``; it inverts any ``y``.

    With ``context_dim > 0`` all of ``x₀, α, β`` are produced from the context by an MLP (amortized radial flows).

    Args:
        input_dim: D.
        context_dim: size of the context (0: free parameters).
        hidden_dims: hidden widths of the context network.

    Example:
        >>> t = RadialTransform(3)
        >>> y, ladj = t.forward_and_log_det(torch.randn(10, 3))
        >>> x, _ = t.inverse_and_log_det(y)

    Reference: Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", section 4.1 and appendix A.
    """

    def __init__(self, input_dim: int, context_dim: int = 0, hidden_dims: Sequence[int] = (64, 64)) -> None:
        super().__init__(input_dim, context_dim)
        bound = 1.0 / math.sqrt(self.input_dim)
        init = {
            "x0": torch.empty(self.input_dim).uniform_(-bound, bound),
            "raw_alpha": torch.empty(()).uniform_(-bound, bound),
            "raw_beta": torch.empty(()).uniform_(-bound, bound),
        }
        self.head = ParamHead(init, self.context_dim, hidden_dims)

    def _params(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        p = self.head(context)
        return p["x0"], p["raw_alpha"], p["raw_beta"]

    def _forward_ld(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return radial_forward(x, *self._params(context))

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return radial_inverse(y, *self._params(context))
