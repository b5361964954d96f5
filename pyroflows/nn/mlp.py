"""Plain multilayer perceptrons with an optional context input, and the activation registry."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

ACTIVATIONS = {"relu": F.relu, "elu": F.elu, "tanh": torch.tanh, "gelu": F.gelu, "silu": F.silu}

#: half-width of the uniform initialisation of output layers that produce transform parameters: small, so that
#: every flow starts near the identity (as in MAF/NSF reference code) but context still changes the output.
OUTPUT_INIT = 1e-3


def params_view(out: Tensor, num_params: int, num_dims: int) -> Tensor:
    """Turn a parameter-major network output ``(..., P·D)`` (unit ``p·D + i``) into per-dimension parameters.

    Returns a ``(..., D, P)`` *view* of a contiguous ``(P, ..., D)`` buffer: transformers index it as
    ``params[..., i, p]``, and kernels that want bins-first layout (the spline) get it back with a free
    ``movedim(-1, 0)``. The one copy here moves whole ``D``-length rows, which is cheap.
    """
    out = out.unflatten(-1, (num_params, num_dims))
    return out.movedim(-2, 0).contiguous().movedim(0, -1)


def get_activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


class MLP(nn.Module):
    """``y = W_L σ(… σ(W_1 x + C c + b_1) …) + b_L``: a multilayer perceptron whose first layer also reads a context.

    The context enters through its own weight matrix ``C`` and is broadcast against the batch shape of ``x``, so a
    context of shape ``(B, context_dim)`` serves inputs of shape ``(n, B, in_features)`` without copies.
    With ``in_features = 0`` the network reads only the context.

    Args:
        in_features: size of ``x`` (0 for a context-only network).
        out_features: size of the output.
        hidden_dims: widths of the hidden layers.
        context_dim: size of the context (0 for none).
        activation: one of ``relu``, ``elu``, ``tanh``, ``gelu``, ``silu``.
        output_bias: initial value of the output bias (shape ``(out_features,)``); the output weights then start
            uniform in ``±OUTPUT_INIT`` so the network starts near this constant.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_dims: Sequence[int] = (64, 64),
        context_dim: int = 0,
        activation: str = "relu",
        output_bias: Tensor | None = None,
    ) -> None:
        super().__init__()
        if in_features == 0 and context_dim == 0:
            raise ValueError("MLP needs in_features > 0 or context_dim > 0")
        hidden_dims = tuple(int(h) for h in hidden_dims)
        self.in_features, self.out_features, self.context_dim = in_features, out_features, context_dim
        self._act = get_activation(activation)
        widths = (hidden_dims[0] if hidden_dims else out_features,) + hidden_dims[1:] + (
            (out_features,) if hidden_dims else ()
        )
        first = widths[0]
        self.input_layer = nn.Linear(in_features, first) if in_features > 0 else None
        self.context_layer = nn.Linear(context_dim, first, bias=in_features == 0) if context_dim > 0 else None
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        last = self.layers[-1] if len(self.layers) else (self.input_layer or self.context_layer)
        self._has_hidden = bool(hidden_dims)
        if output_bias is not None:
            with torch.no_grad():
                last.weight.uniform_(-OUTPUT_INIT, OUTPUT_INIT)
                if last.bias is None:
                    raise ValueError("output_bias needs a biased output layer")
                last.bias.copy_(torch.as_tensor(output_bias, dtype=last.bias.dtype))
            if not len(self.layers) and self.input_layer is not None and self.context_layer is not None:
                with torch.no_grad():
                    self.context_layer.weight.uniform_(-OUTPUT_INIT, OUTPUT_INIT)

    def forward(self, x: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        h = None
        if self.input_layer is not None:
            h = self.input_layer(x)
        if self.context_layer is not None:
            hc = self.context_layer(context)
            h = hc if h is None else h + hc
        if not self._has_hidden:
            return h
        for layer in self.layers:
            h = layer(self._act(h))
        return h
