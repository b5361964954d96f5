"""``Invert``: any transform turned around."""

from __future__ import annotations

import torch

from .base import FlowTransform

Tensor = torch.Tensor


class Invert(FlowTransform):
    """The inverse of a transform, as a transform: ``Invert(T)`` maps ``x`` to ``T⁻¹(x)`` and back with ``T``.

    Math: forward ``y = T⁻¹(x)`` with ``log|det ∂y/∂x| = -log|det ∂T/∂u|`` at ``u = y`` (the wrapped transform's
    inverse pass, whose log-determinant it returns as it is), inverse ``x = T(y)`` with the log-determinant of ``T``'s
    forward pass. Both are exact (no cache); each costs what the other direction of ``T`` costs, so inverting a
    MAF layer (density-fast) gives a sampling-fast layer, and the other way round. The context, ``input_dim`` and
    ``context_dim`` are those of ``T``; the parameters are ``T``'s, under ``transform.`` (``state_dict`` keys
    ``transform.<name>``, the same in numpyroflows), and they are shared with ``T`` itself (not copied).

    A data-dependent initialisation (an :class:`~pyroflows.transforms.ActNorm` inside) runs in the other direction:
    ``Invert(T).initialize(v, "forward")`` is ``T.initialize(v, "inverse")``.

    Args:
        transform: the pyroflows transform to invert (any :class:`FlowTransform`, an ``Invert`` included).

    Example:
        >>> layer = Invert(AutoregressiveTransform(3, "spline"))   # a MAF layer turned into an IAF-like one
        >>> flow = Flow([Invert(LULinear(3)), layer])
        >>> y, ld = layer.forward_and_log_det(torch.randn(5, 3))

    Reference: zuko's ``Inverse`` and FlowJAX's ``Invert`` (the same construction); Papamakarios et al. (2021),
    "Normalizing flows for probabilistic modeling and inference", §2.2 (invertible transformations compose and
    invert, with negated log-determinants).
    """

    transform_args = ("transform",)

    def __init__(self, transform: FlowTransform) -> None:
        if not isinstance(transform, FlowTransform):
            raise TypeError(f"Invert takes a pyroflows transform (a FlowTransform subclass), got "
                            f"{type(transform).__name__}")
        super().__init__(transform.input_dim, transform.context_dim)
        self.transform = transform

    @property
    def requires_initialization(self) -> bool:
        """Whether the wrapped transform still waits for its data-dependent initialisation."""
        return self.transform.requires_initialization

    def initialize(self, v: Tensor, direction: str = "forward") -> Invert:
        """The wrapped transform's initialisation in the opposite direction (this layer's input is its output);
        returns this layer."""
        super().initialize(v, direction)
        self.transform.initialize(v, "inverse" if direction == "forward" else "forward")
        return self

    def _forward_ld(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.transform._inverse_ld(x, context)

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.transform._forward_ld(y, context)

    def _log_abs_det(self, x: Tensor, y: Tensor, context: Tensor | None) -> Tensor:
        return -self.transform._log_abs_det(y, x, context)
