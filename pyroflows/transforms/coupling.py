"""Coupling layers with any transformer (Dinh et al. 2014 "NICE", 2017 "RealNVP"; Durkan et al. 2019 "NSF-C").

The dimensions are split by a mask into a conditioning set ``A`` (passed through unchanged) and a transformed set
``B``. With ``x`` the noise side and ``y`` the data side, ``x_A = y_A`` and ``x_B = τ(y_B; θ(y_A, context))``: the
transformer runs data to noise, as in zuko and FlowJAX, so training by maximum likelihood uses its direct formula
(RealNVP's ``x_B = shift + scale·y_B``). Both directions take one network pass; the Jacobian is triangular with
log-det ``Σ_B log τ'``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..nn.mlp import MLP, OUTPUT_INIT, params_view
from .base import FlowTransform
from .transformers import Transformer, make_transformer

Tensor = torch.Tensor


def coupling_mask(input_dim: int, mask: str | Sequence[bool | int] = "half", parity: int = 0, seed: int = 0) -> Tensor:
    """Boolean mask, True for the conditioning (identity) dimensions.

    ``"half"``: the first ``⌈D/2⌉`` dimensions; ``"alternating"``: even indices; ``"random"``: a random half (from
    ``seed``); or an explicit boolean sequence. ``parity=1`` swaps the roles of the two sets.
    """
    if isinstance(mask, str):
        if mask == "half":
            m = torch.arange(input_dim) < (input_dim + 1) // 2
        elif mask == "alternating":
            m = torch.arange(input_dim) % 2 == 0
        elif mask == "random":
            g = torch.Generator().manual_seed(int(seed))
            m = torch.zeros(input_dim, dtype=torch.bool)
            m[torch.randperm(input_dim, generator=g, device="cpu")[: (input_dim + 1) // 2].to(m.device)] = True
        else:
            raise ValueError(f"mask must be 'half', 'alternating', 'random' or a boolean list, got {mask!r}")
    else:
        m = torch.as_tensor([bool(v) for v in mask], dtype=torch.bool)
        if m.numel() != input_dim:
            raise ValueError(f"mask has {m.numel()} entries but input_dim={input_dim}")
    if parity % 2:
        m = ~m
    if m.all() or not m.any():
        raise ValueError("the coupling mask must leave at least one dimension on each side (input_dim >= 2)")
    return m


class CouplingTransform(FlowTransform):
    """``y_A = x_A``, ``y_B = τ(x_B; θ(x_A, context))`` with an MLP conditioner.

    Args:
        input_dim: D (at least 2).
        transformer: ``"affine"`` (RealNVP), ``"additive"`` (NICE), ``"spline"`` (NSF-C), ... or an instance.
        context_dim: size of the context (0: none).
        hidden_dims: conditioner MLP hidden widths.
        mask: ``"half"``, ``"alternating"``, ``"random"`` or an explicit boolean list (True = conditioning).
        parity: 1 swaps the two sets (recipes alternate it between layers).
        activation: hidden nonlinearity.
        count_bins, bound: spline options.
        seed: seed of the random mask.
        output_init: half-width of the uniform start of the conditioner's output weights (its bias starts at the
            transformer's identity), or ``"fan_in"``; see :class:`~pyroflows.transforms.AutoregressiveTransform`.

    Example:
        >>> t = CouplingTransform(4, "spline", mask="half")
        >>> y, ladj = t.forward_and_log_det(torch.randn(10, 4))
    """

    def __init__(
        self,
        input_dim: int,
        transformer: str | Transformer = "affine",
        context_dim: int = 0,
        hidden_dims: Sequence[int] = (64, 64),
        mask: str | Sequence[bool | int] = "half",
        parity: int = 0,
        activation: str = "relu",
        count_bins: int = 8,
        bound: float = 5.0,
        seed: int = 0,
        output_init: float | str = OUTPUT_INIT,
    ) -> None:
        super().__init__(input_dim, context_dim)
        if input_dim < 2:
            raise ValueError("a coupling layer needs input_dim >= 2; use ElementwiseTransform for 1-D data")
        self.transformer = make_transformer(transformer, count_bins=count_bins, bound=bound)
        m = coupling_mask(input_dim, mask, parity, seed)
        idx_a, idx_b = torch.nonzero(m).squeeze(-1), torch.nonzero(~m).squeeze(-1)
        self.register_buffer("mask", m, persistent=False)
        self.register_buffer("idx_a", idx_a, persistent=False)
        self.register_buffer("idx_b", idx_b, persistent=False)
        self.register_buffer("unperm", torch.argsort(torch.cat([idx_a, idx_b])), persistent=False)
        p = self.transformer.num_params
        self.num_b = int(idx_b.numel())
        self.net = MLP(
            int(idx_a.numel()),
            self.num_b * p,
            hidden_dims,
            context_dim=context_dim,
            activation=activation,
            output_bias=self.transformer.identity_params().repeat_interleave(self.num_b),  # parameter-major
            output_init=output_init,
        )

    def _couple(self, v: Tensor, context: Tensor | None, density: bool) -> tuple[Tensor, Tensor]:
        va, vb = v[..., self.idx_a], v[..., self.idx_b]
        params = params_view(self.net(va, context), self.transformer.num_params, self.num_b)
        out_b, ld = (self.transformer.forward if density else self.transformer.inverse)(vb, params)
        va = va.expand(out_b.shape[:-1] + va.shape[-1:])
        return torch.cat([va, out_b], -1)[..., self.unperm], ld.sum(-1)

    def _forward_ld(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, density=False)

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._couple(y, context, density=True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, transformer={self.transformer!r}, mask={self.mask.int().tolist()}"
