"""MADE: masked autoencoder for distribution estimation (Germain et al. 2015), as a flow conditioner.

Each input dimension ``i`` gets a degree ``m(i)`` in ``1..D``; hidden units get degrees in ``1..D-1``; a hidden unit
of degree ``k`` sees inputs of degree ``<= k``, and the parameters of input ``i`` see hidden units of degree
``< m(i)``. The parameters of dimension ``i`` therefore depend only on the dimensions that come before it in the
order, which is what makes the flow's Jacobian triangular. The context (if any) feeds every first-layer unit.

Hidden degrees are assigned deterministically (``k mod (D - 1) + 1``), so a MADE is fully described by its input
order, its sizes and its weights; the masks are buffers and travel with ``.to(device)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import OUTPUT_INIT, get_activation, output_init_bound, params_view

Tensor = torch.Tensor


def input_degrees(input_dim: int, order: str | Sequence[int] = "ascending") -> Tensor:
    """Degrees ``1..D`` of the inputs: ``ascending``, ``descending`` or an explicit permutation of ``0..D-1``
    listing the dimensions from first to last in the autoregressive order."""
    if isinstance(order, str):
        if order == "ascending":
            return torch.arange(1, input_dim + 1)
        if order == "descending":
            return torch.arange(input_dim, 0, -1)
        raise ValueError(f"order must be 'ascending', 'descending' or a permutation, got {order!r}")
    perm = torch.as_tensor(list(order), dtype=torch.long)
    if sorted(perm.tolist()) != list(range(input_dim)):
        raise ValueError(f"order must be a permutation of 0..{input_dim - 1}, got {list(order)}")
    deg = torch.empty(input_dim, dtype=torch.long)
    deg[perm] = torch.arange(1, input_dim + 1)
    return deg


def hidden_degrees(width: int, input_dim: int) -> Tensor:
    if input_dim == 1:
        return torch.zeros(width, dtype=torch.long)
    return torch.arange(width) % (input_dim - 1) + 1


class MADE(nn.Module):
    """Masked MLP ``x ↦ θ`` with ``θ[..., i, :]`` depending only on ``x[..., j]`` for ``m(j) < m(i)`` (and context).

    Args:
        input_dim: D.
        num_params: parameters produced per dimension (P); the output has shape ``(..., D, P)``.
        hidden_dims: widths of the hidden layers.
        context_dim: size of an optional context vector fed to the first hidden layer.
        activation: hidden nonlinearity.
        order: ``ascending``, ``descending`` or an explicit permutation (see :func:`input_degrees`).
        output_bias: initial output bias per parameter (``(P,)``), repeated over the dimensions.
        output_init: half-width of the uniform start of the output weights, or ``"fan_in"`` for
            ``±1/sqrt(hidden_dims[-1])`` (see :func:`~pyroflows.nn.mlp.output_init_bound`). ``None`` (default):
            ``OUTPUT_INIT = 1e-3`` when ``output_bias`` is given (the MADE starts near that constant), else the
            ``torch.nn.Linear`` start of weights and bias.
    """

    def __init__(
        self,
        input_dim: int,
        num_params: int,
        hidden_dims: Sequence[int] = (64, 64),
        context_dim: int = 0,
        activation: str = "relu",
        order: str | Sequence[int] = "ascending",
        output_bias: Tensor | None = None,
        output_init: float | str | None = None,
    ) -> None:
        super().__init__()
        hidden_dims = tuple(int(h) for h in hidden_dims)
        if not hidden_dims:
            raise ValueError("MADE needs at least one hidden layer (hidden_dims=(64, 64) is a good default)")
        self.input_dim, self.num_params, self.context_dim = input_dim, num_params, context_dim
        self._act = get_activation(activation)
        deg_in = input_degrees(input_dim, order)
        self.register_buffer("degrees", deg_in, persistent=False)
        degs = [deg_in] + [hidden_degrees(h, input_dim) for h in hidden_dims]
        sizes = [input_dim, *hidden_dims]
        tensors: list[Tensor] = []
        masks: list[Tensor] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            lin = nn.Linear(a, b)
            tensors += [lin.weight.detach(), lin.bias.detach()]
            masks.append((degs[i + 1][:, None] >= degs[i][None, :]).to(torch.get_default_dtype()))
        # parameter-major output units: unit p·D + i is parameter p of dimension i
        out = nn.Linear(hidden_dims[-1], input_dim * num_params)
        deg_out = deg_in.repeat(num_params)
        masks.append((deg_out[:, None] > degs[-1][None, :]).to(torch.get_default_dtype()))
        with torch.no_grad():
            if output_bias is not None or output_init is not None:
                a = output_init_bound(OUTPUT_INIT if output_init is None else output_init, hidden_dims[-1])
                out.weight.uniform_(-a, a)
            if output_bias is not None:
                out.bias.copy_(torch.as_tensor(output_bias, dtype=out.bias.dtype).repeat_interleave(input_dim))
        tensors += [out.weight.detach(), out.bias.detach()]
        for i, m in enumerate(masks):
            self.register_buffer(f"mask{i}", m, persistent=False)
        self.num_layers = len(masks)
        self._shapes = [tuple(t.shape) for t in tensors]
        self._sizes = [t.numel() for t in tensors]
        #: all weights and biases in one tensor, layout [W_1, b_1, ..., W_L, b_L] (row-major): one optimizer update
        #: per MADE instead of 2L (optimizers without foreach, the CPU default, loop over tensors)
        self.flat = nn.Parameter(torch.cat([t.reshape(-1) for t in tensors]))
        self.context_layer = nn.Linear(context_dim, hidden_dims[0], bias=False) if context_dim > 0 else None
        # order in which the dimensions are determined, for sequential inversion
        self._sequence = torch.argsort(deg_in).tolist()

    @property
    def sequence(self) -> list[int]:
        """Dimensions in autoregressive order (first to last)."""
        return self._sequence

    def layers(self) -> list[tuple[Tensor, Tensor]]:
        """``[(W_1 ⊙ M_1, b_1), ..., (W_L ⊙ M_L, b_L)]``: the masked weights and biases, differentiable."""
        parts = self.flat.split(self._sizes)
        return [(parts[2 * i].view(self._shapes[2 * i]) * getattr(self, f"mask{i}"),
                 parts[2 * i + 1].view(self._shapes[2 * i + 1])) for i in range(self.num_layers)]

    def hidden(self, x: Tensor, context: Tensor | None = None, layers: list | None = None) -> Tensor:
        """Last hidden activation (before the output layer)."""
        layers = self.layers() if layers is None else layers
        h = F.linear(x, *layers[0])
        if self.context_layer is not None:
            h = h + self.context_layer(context)
        for w, b in layers[1:-1]:
            h = F.linear(self._act(h), w, b)
        return self._act(h)

    def output(self, h: Tensor, dim: int | None = None, layers: list | None = None) -> Tensor:
        """Parameters ``(..., D, P)`` from the last hidden activation, or ``(..., 1, P)`` for one dimension."""
        w, b = (self.layers() if layers is None else layers)[-1]
        d = self.input_dim
        if dim is None:
            return params_view(F.linear(h, w, b), self.num_params, d)
        rows = slice(dim, None, d)  # units p·D + dim
        return F.linear(h, w[rows], b[rows]).unsqueeze(-2)

    @torch.no_grad()
    def zero_output_(self) -> MADE:
        """Set the output weights ``W_L`` to zero, in place, and return the MADE.

        The MADE then computes its output bias ``b_L`` for every input and context: a flow layer built with the
        transformer's identity parameters as that bias is then exactly the identity, and training moves ``W_L``
        first (as Glow's zero-initialised last layers, Kingma & Dhariwal 2018)."""
        stop = sum(self._sizes[:-1])  # flat layout [W_1, b_1, ..., W_L, b_L]
        self.flat[stop - self._sizes[-2]: stop] = 0.0
        return self

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        layers = self.layers()
        return self.output(self.hidden(x, context, layers), layers=layers)

