"""Constant or context-dependent parameter sets for transforms that are not coupling/autoregressive.

A :class:`ParamHead` holds the raw parameters of a transform. Without a context they are free ``nn.Parameter``
tensors named after their role (``ParamHead.<name>``). With ``context_dim > 0`` they are the outputs of a small MLP on
the context (amortized parameters, as in conditional planar flows or VAE encoders); the MLP's output bias starts at the
initial values and its output weights near zero, so a conditional transform starts where the unconditional one would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .mlp import MLP

Tensor = torch.Tensor


class ParamHead(nn.Module):
    """Named raw parameters, free or produced from a context.

    Args:
        init: initial value of each parameter (any shapes).
        context_dim: 0 for free parameters, else the size of the context.
        hidden_dims: hidden widths of the context network.
        activation: its hidden nonlinearity.
        dtype: floating type of the parameters (``None``: torch's default dtype). ``init`` is converted to it once,
            so float64 values (e.g. a start computed in float64) stay exact in a float64 head, whatever the default
            dtype; building in the default dtype and calling ``.double()`` would keep only their float32 rounding.

    Calling ``head(context)`` returns ``{name: tensor}``; with a context of batch shape ``B`` each tensor has shape
    ``B + init[name].shape``.
    """

    def __init__(
        self,
        init: Mapping[str, Tensor],
        context_dim: int = 0,
        hidden_dims: Sequence[int] = (64, 64),
        activation: str = "relu",
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.names = list(init)
        self.shapes = {k: tuple(torch.as_tensor(v).shape) for k, v in init.items()}
        self.context_dim = context_dim
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if context_dim == 0:
            for k, v in init.items():
                self.register_parameter(k, nn.Parameter(torch.as_tensor(v, dtype=dtype).clone()))
            self.net = None
        else:
            flat = torch.cat([torch.as_tensor(v, dtype=dtype).reshape(-1) for v in init.values()])
            self.net = MLP(0, flat.numel(), hidden_dims, context_dim=context_dim, activation=activation,
                           output_bias=flat, dtype=dtype)
        self._sizes = [math.prod(s) for s in self.shapes.values()]

    def forward(self, context: Tensor | None = None) -> dict[str, Tensor]:
        if self.net is None:
            return {k: getattr(self, k) for k in self.names}
        out = self.net(None, context)
        parts = torch.split(out, self._sizes, dim=-1)
        batch = out.shape[:-1]
        return {k: p.reshape(batch + self.shapes[k]) for k, p in zip(self.names, parts)}

    @torch.no_grad()
    def set_value(self, name: str, value: Tensor) -> None:
        """Set a parameter (or, with a context, the output bias that produces it) to ``value``."""
        if self.net is None:
            getattr(self, name).copy_(value)
            return
        start = sum(self._sizes[: self.names.index(name)])
        bias = self.net.layers[-1].bias if len(self.net.layers) else self.net.context_layer.bias
        bias[start : start + self._sizes[self.names.index(name)]] = value.reshape(-1)
