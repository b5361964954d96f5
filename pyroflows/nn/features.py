"""Feature networks: maps from observations to the feature vector (the context) that amortized flows condition on.

:class:`FeatureMLP` is the default feature network of :class:`~pyroflows.infer.FlowEncoder` (VAE encoders); any
``nn.Module`` with ``out_features`` serves as well. Mirrors :mod:`numpyroflows.nn.features` (same names, arguments and
parameter names).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .mlp import get_activation

Tensor = torch.Tensor


class FeatureMLP(nn.Module):
    """A feature network for :class:`~pyroflows.infer.FlowEncoder`: ``h = σ(W_L … σ(W_1 x + b_1) … + b_L)``, an MLP
    whose every layer, the last included, is followed by the activation.

    Args:
        in_features: size of ``x`` (its last axis).
        hidden_dims: widths of the layers; the last one is the feature size (``out_features``).
        activation: one of ``relu``, ``elu``, ``tanh``, ``gelu``, ``silu``.

    Example:
        >>> net = FeatureMLP(784, (300, 300))     # features of size 300; FlowEncoder reads net.out_features
        >>> net(torch.rand(5, 784)).shape
        torch.Size([5, 300])

    Parameters are named ``layers.{i}.weight`` / ``layers.{i}.bias`` (as numpyroflows' ``FeatureMLP``).
    """

    def __init__(self, in_features: int, hidden_dims: Sequence[int] = (300, 300), activation: str = "relu") -> None:
        super().__init__()
        widths = (int(in_features),) + tuple(int(h) for h in hidden_dims)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"FeatureMLP needs in_features >= 1 and at least one hidden width >= 1, got "
                             f"in_features={in_features}, hidden_dims={tuple(hidden_dims)}")
        self.in_features, self.out_features = widths[0], widths[-1]
        self.activation = activation
        self._act = get_activation(activation)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = self._act(layer(x))
        return x

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


__all__ = ["FeatureMLP"]
