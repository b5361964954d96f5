"""Elementwise bijections: a transformer with constant (or context-dependent) parameters, and fixed nonlinearities."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.distributions import constraints

from .._checks import validation_enabled
from ..functional import linear as F_lin
from ..nn.params import ParamHead
from .base import FlowTransform
from .transformers import Transformer, make_transformer

Tensor = torch.Tensor


class ElementwiseTransform(FlowTransform):
    """``x_i = τ(y_i; θ_i)`` (data ``y`` to noise ``x``, the density direction) with one set of transformer
    parameters per dimension; sampling uses ``τ⁻¹``.

    With ``context_dim > 0``, ``θ`` is produced from the context by an MLP (a conditional elementwise flow).

    Args:
        input_dim: D.
        transformer: a transformer name (``"spline"``, ``"affine"``, ``"bspline"``, ``"mixture"``, ...) or instance.
        context_dim: size of the context (0: none).
        hidden_dims: hidden widths of the context network.
        count_bins, bound: spline options, passed to the transformer when it takes them.

    Example:
        >>> t = ElementwiseTransform(3, "spline", count_bins=8)
        >>> y, ladj = t.forward_and_log_det(torch.randn(10, 3))
    """

    def __init__(
        self,
        input_dim: int,
        transformer: str | Transformer = "spline",
        context_dim: int = 0,
        hidden_dims: Sequence[int] = (64, 64),
        count_bins: int = 8,
        bound: float = 5.0,
    ) -> None:
        super().__init__(input_dim, context_dim)
        self.transformer = make_transformer(transformer, count_bins=count_bins, bound=bound)
        init = self.transformer.identity_params().expand(input_dim, -1).clone()
        self.head = ParamHead({"params": init}, context_dim, hidden_dims)

    def _forward_ld(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        y, ld = self.transformer.inverse(x, self.head(context)["params"])
        return y, ld.sum(-1)

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x, ld = self.transformer.forward(y, self.head(context)["params"])
        return x, ld.sum(-1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, transformer={self.transformer!r}"


# ------------------------------------------------------------------------------------------ fixed nonlinearities

#: floor of the LeakyReLU negative-side slope (keeps its log and the inverse finite).
MIN_SLOPE = 1e-4


class LeakyReLU(FlowTransform):
    """Leaky ReLU with a learnable positive negative-side slope per dimension.

    ``y = x`` for ``x ≥ 0`` and ``slope ⊙ x`` otherwise, ``slope = 1e-4 + softplus(raw)`` (starts at ``init_slope``);
    ``log|det| = Σ_{x_i < 0} log slope_i``.

    Args:
        input_dim: D.
        context_dim: size of the context (0: free slopes).
        hidden_dims: hidden widths of the context network.
        init_slope: initial slope (> 1e-4).

    Example:
        >>> t = LeakyReLU(3, init_slope=0.2)
        >>> y, ladj = t.forward_and_log_det(torch.randn(10, 3))

    Reference: Papamakarios et al. (2021), "Normalizing Flows for Probabilistic Modeling and Inference".
    """

    def __init__(
        self, input_dim: int, context_dim: int = 0, hidden_dims: Sequence[int] = (64, 64), init_slope: float = 0.5
    ) -> None:
        super().__init__(input_dim, context_dim)
        if not float(init_slope) > MIN_SLOPE:
            raise ValueError(f"init_slope must be a positive number above {MIN_SLOPE}, got {init_slope}")
        raw = math.log(math.expm1(float(init_slope) - MIN_SLOPE))
        self.head = ParamHead({"raw_slope": torch.full((self.input_dim,), raw)}, context_dim, hidden_dims)

    def slope(self, context: Tensor | None = None) -> Tensor:
        """The negative-side slopes (``(D,)``, or batched with a context)."""
        return MIN_SLOPE + torch.nn.functional.softplus(self.head(context)["raw_slope"])

    def _forward_ld(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return F_lin.leaky_relu_forward(x, self.slope(context))

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return F_lin.leaky_relu_inverse(y, self.slope(context))


def _check_open_interval(y: Tensor, low: float, high: float, where: str, fix: str) -> None:
    if validation_enabled() and not bool(((y > low) & (y < high)).all()):
        raise ValueError(
            f"{where}: the inverse needs every value strictly inside ({low:g}, {high:g}), got values in "
            f"[{float(y.min()):.6g}, {float(y.max()):.6g}]: {fix} (or call pyroflows.set_validation(False) to clamp "
            "such values into the interval instead)"
        )


class Sigmoid(FlowTransform):
    """The logistic sigmoid, mapping R^D onto the open unit cube.

    ``y = σ(x)``, ``log|det| = Σ (-softplus(-x) - softplus(x))``; inverse ``x = logit(y)``. Outputs are clamped to
    the representable open interval so far inputs stay finite. No parameters, no context.

    Args:
        input_dim: D.

    Example:
        >>> t = Sigmoid(2)
        >>> y, ladj = t.forward_and_log_det(torch.randn(10, 2))   # y in (0, 1)

    Reference: Dinh et al. (2017), "Density estimation using Real NVP" (the logit transform of bounded data).
    """

    codomain = constraints.independent(constraints.unit_interval, 1)

    def __init__(self, input_dim: int) -> None:
        super().__init__(input_dim, 0)

    def _forward_ld(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return F_lin.sigmoid_forward(x)

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        _check_open_interval(
            y, 0.0, 1.0, "Sigmoid", "rescale the data into (0, 1) first, e.g. (y - low) / (high - low) with a margin"
        )
        return F_lin.sigmoid_inverse(y)


class Tanh(FlowTransform):
    """The hyperbolic tangent, mapping R^D onto the open cube (-1, 1)^D.

    ``y = tanh(x)``, ``log|det| = Σ 2 (log 2 - x - softplus(-2x))`` (stable); inverse ``x = atanh(y)``. Outputs are
    clamped to the representable open interval so far inputs stay finite. No parameters, no context.

    Args:
        input_dim: D.

    Example:
        >>> t = Tanh(2)
        >>> y, ladj = t.forward_and_log_det(torch.randn(10, 2))   # y in (-1, 1)

    Reference: Papamakarios et al. (2021), "Normalizing Flows for Probabilistic Modeling and Inference".
    """

    codomain = constraints.independent(constraints.interval(-1.0, 1.0), 1)

    def __init__(self, input_dim: int) -> None:
        super().__init__(input_dim, 0)

    def _forward_ld(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return F_lin.tanh_forward(x)

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        fix = "rescale the data into (-1, 1) first, e.g. 2 (y - low) / (high - low) - 1 with a margin"
        _check_open_interval(y, -1.0, 1.0, "Tanh", fix)
        return F_lin.tanh_inverse(y)
