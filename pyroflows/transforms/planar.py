"""Planar flow with an exact inverse of fresh data (Rezende & Mohamed 2015)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..functional.planar import IDENTITY_WTU, planar_constrain, planar_forward, planar_inverse
from ..nn.params import ParamHead
from .base import FlowTransform

Tensor = torch.Tensor


class PlanarTransform(FlowTransform):
    """Planar flow ``y = x + û tanh(wᵀx + b)``, invertible for every parameter value, with an exact inverse.

    ``û = u + (m(wᵀu) - wᵀu) w/‖w‖²``, ``m(a) = -1 + softplus(a)``, keeps ``wᵀû ≥ -1`` (appendix A of the paper);
    ``log|det| = log|1 + wᵀû tanh'(wᵀx + b)|``. The inverse solves the scalar monotone equation
    ``wᵀy = α + wᵀû tanh(α + b)`` for ``α = wᵀx`` by bracketed bisection and a differentiable Newton step, then
    ``x = y - û tanh(α + b)``: it inverts any ``y`` (Pyro's ``Planar`` only inverts its cached last output).

    The layer starts at the identity: ``w`` and ``b`` are drawn in ``±1/√D`` and ``u = c w/‖w‖²`` with
    ``c = softplus⁻¹(1)``, so that ``û = 0``; the first gradient step moves ``u``, and ``w``, ``b`` follow.

    With ``context_dim > 0`` all of ``u, w, b`` are produced from the context by an MLP (amortized planar flows, as in
    the VAE experiments of the paper); their batch shape is the context's and broadcasts against the input's.

    Args:
        input_dim: D.
        context_dim: size of the context (0: free parameters).
        hidden_dims: hidden widths of the context network.

    Example:
        >>> t = PlanarTransform(3)
        >>> y, ladj = t.forward_and_log_det(torch.randn(10, 3))
        >>> x, _ = t.inverse_and_log_det(y)

    Reference: Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows", section 4.1 and appendix A.
    """

    def __init__(self, input_dim: int, context_dim: int = 0, hidden_dims: Sequence[int] = (64, 64)) -> None:
        super().__init__(input_dim, context_dim)
        bound = 1.0 / math.sqrt(self.input_dim)
        w = torch.empty(self.input_dim).uniform_(-bound, bound)
        init = {
            # u along w with wᵀu = softplus⁻¹(1): then wᵀû = m(wᵀu) = 0 and û = 0, the identity
            "u": IDENTITY_WTU * w / w.dot(w),
            "w": w,
            "b": torch.empty(()).uniform_(-bound, bound),
        }
        self.head = ParamHead(init, self.context_dim, hidden_dims)

    def _params(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        p = self.head(context)
        return p["u"], p["w"], p["b"]

    def _forward_ld(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return planar_forward(x, *self._params(context))

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return planar_inverse(y, *self._params(context))

    def u_hat(self, context: Tensor | None = None) -> Tensor:
        """The constrained ``û`` (with ``wᵀû ≥ -1``) for this context."""
        u, w, _ = self._params(context)
        return planar_constrain(u, w)[0]
