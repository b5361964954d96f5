"""Plain multilayer perceptrons with an optional context input, and the activation registry."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

ACTIVATIONS = {"relu": F.relu, "elu": F.elu, "tanh": torch.tanh, "gelu": F.gelu, "silu": F.silu}

#: default half-width of the uniform initialisation of output layers that produce transform parameters: small, so
#: that every flow starts near the identity (as in MAF/NSF reference code) but context still changes the output.
OUTPUT_INIT = 1e-3


def output_init_bound(output_init: float | str, fan_in: int) -> float:
    """Half-width ``a`` of the uniform start ``U(-a, a)`` of an output layer's weights.

    ``output_init`` is either the half-width itself (a number ``>= 0``; the flows' default ``1e-3`` starts every layer
    within about ``1e-3`` of the identity) or ``"fan_in"`` for ``a = 1/sqrt(fan_in)``, the start of
    ``torch.nn.Linear`` (and of zuko's and FlowJAX's conditioners).

    Which to choose: a guide (:class:`~pyroflows.infer.AutoFlowGuide`) or a VAE encoder should start at its base
    distribution, so keep the small default. For density estimation by maximum likelihood neither start wins
    everywhere: ``"fan_in"`` trains the hidden layers from the first step (with output weights near zero their
    gradient starts over 100 times smaller), which can help affine autoregressive flows, while spline flows fit
    better from the identity start.
    """
    if isinstance(output_init, str):
        if output_init == "fan_in":
            return 1.0 / math.sqrt(max(int(fan_in), 1))
        raise ValueError(f"output_init must be a number >= 0 or 'fan_in', got {output_init!r}")
    bound = float(output_init)
    if not math.isfinite(bound) or bound < 0:
        raise ValueError(f"output_init must be a finite number >= 0 (a half-width) or 'fan_in', got {output_init!r}")
    return bound


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
            uniform in ``±output_init`` so the network starts near this constant.
        output_init: half-width of the uniform start of the output weights, or ``"fan_in"`` for
            ``±1/sqrt(fan_in)`` (see :func:`output_init_bound`). ``None`` (default): ``OUTPUT_INIT = 1e-3`` when
            ``output_bias`` is given, else the ``torch.nn.Linear`` start of weights and bias.
        dtype: floating type of the weights (``None``: torch's default dtype), as ``torch.nn.Linear``'s; the layers
            are drawn in the default dtype and converted, then the output layer's start is drawn and ``output_bias``
            written in ``dtype`` (a float64 bias stays exact).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_dims: Sequence[int] = (64, 64),
        context_dim: int = 0,
        activation: str = "relu",
        output_bias: Tensor | None = None,
        output_init: float | str | None = None,
        dtype: torch.dtype | None = None,
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
        if dtype is not None:
            self.to(dtype)
        last = self.layers[-1] if len(self.layers) else (self.input_layer or self.context_layer)
        self._has_hidden = bool(hidden_dims)
        if output_bias is not None or output_init is not None:
            if output_init is None:
                output_init = OUTPUT_INIT
            with torch.no_grad():
                a = output_init_bound(output_init, last.in_features)
                last.weight.uniform_(-a, a)
                if output_bias is not None:
                    if last.bias is None:
                        raise ValueError("output_bias needs a biased output layer")
                    last.bias.copy_(torch.as_tensor(output_bias, dtype=last.bias.dtype))
                if not len(self.layers) and self.input_layer is not None and self.context_layer is not None:
                    a = output_init_bound(output_init, context_dim)  # the context also feeds the output directly
                    self.context_layer.weight.uniform_(-a, a)

    @torch.no_grad()
    def zero_output_(self) -> MLP:
        """Set the weights of the output layer to zero, in place, and return the MLP: it then computes its output bias
        for every input and context (without hidden layers, the input and context weights are the output layer).
        As Glow's zero-initialised last layers (Kingma & Dhariwal 2018), training moves these weights first."""
        if self._has_hidden:
            self.layers[-1].weight.zero_()
        else:
            for layer in (self.input_layer, self.context_layer):
                if layer is not None:
                    layer.weight.zero_()
        return self

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
