"""The catalogue under test: every recipe and every transform, as small flows with perturbed parameters."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pyroflows import flows
from pyroflows import transforms as T

H = (16, 16)

#: name -> (factory(input_dim, context_dim) -> Flow, takes_context)
CATALOGUE: dict[str, tuple[Callable[[int, int], flows.Flow], bool]] = {
    "MAF": (lambda d, c: flows.MAF(d, c, num_transforms=2, hidden_dims=H), True),
    "MAF-softplus": (lambda d, c: flows.MAF(d, c, 2, H, transformer={"name": "affine", "scale": "softplus"}), True),
    "MAF-randperm": (lambda d, c: flows.MAF(d, c, num_transforms=3, hidden_dims=H, randperm=True), True),
    "MAF-additive": (lambda d, c: flows.MAF(d, c, 2, H, transformer="additive"), True),
    "MAF-bspline": (lambda d, c: flows.MAF(d, c, 2, H, transformer="bspline", count_bins=5, bound=3.0), True),
    "MAF-mixture": (lambda d, c: flows.MAF(d, c, 2, H, transformer="mixture", count_bins=3), True),
    "IAF": (lambda d, c: flows.IAF(d, c, num_transforms=2, hidden_dims=H), True),
    "IAF-spline": (lambda d, c: flows.IAF(d, c, 2, H, transformer="spline", count_bins=5, bound=3.0), True),
    "NSF": (lambda d, c: flows.NSF(d, c, num_transforms=2, hidden_dims=H, count_bins=5, bound=3.0), True),
    "Coupling-spline": (lambda d, c: flows.Coupling(d, c, 2, H, transformer="spline", count_bins=5, bound=3.0), True),
    "Coupling-mixture": (lambda d, c: flows.Coupling(d, c, 2, H, transformer="mixture", mask="alternating",
                                                     count_bins=3), True),
    "RealNVP": (lambda d, c: flows.RealNVP(d, c, num_transforms=3, hidden_dims=H), True),
    "NICE": (lambda d, c: flows.NICE(d, c, num_transforms=3, hidden_dims=H), True),
    "BNAF": (lambda d, c: flows.BNAF(d, c, num_transforms=2, hidden_factor=4), True),
    "BNAF-iaf-normal": (lambda d, c: flows.BNAF(d, c, 1, hidden_factor=4, residual="normal", orientation="iaf"),
                        True),
    "Planar": (lambda d, c: flows.Planar(d, c, num_transforms=3, hidden_dims=H), True),
    "Radial": (lambda d, c: flows.Radial(d, c, num_transforms=3, hidden_dims=H), True),
    "Sylvester": (lambda d, c: flows.Sylvester(d, c, num_transforms=2, hidden_dims=H), True),
    "Sylvester-orthogonal": (lambda d, c: flows.Sylvester(d, c, 2, H, num_ortho=max(1, d - 1), q_type="orthogonal"),
                             True),
    "Elementwise-spline": (lambda d, c: flows.Elementwise(d, c, 1, H, count_bins=5, bound=3.0), True),
    "Elementwise-bspline": (lambda d, c: flows.Elementwise(d, c, 1, H, transformer="bspline", bound=3.0), True),
    "Elementwise-affine": (lambda d, c: flows.Elementwise(d, c, 1, H, transformer="affine"), True),
    "LULinear": (lambda d, c: flows.Flow([T.LULinear(d, c, H), T.ActNorm(d)]), True),
    "Householder": (lambda d, c: flows.Flow([T.Householder(d, c, H, count=2), T.DiagonalAffine(d, c, H)]), True),
    "LeakyReLU": (lambda d, c: flows.Flow([T.DiagonalAffine(d, c, H), T.LeakyReLU(d, c, H),
                                           T.RandomPermutation(d, seed=1), T.LULinear(d, c, H)]), True),
    "ActNorm": (lambda d, c: flows.Flow([T.ActNorm(d, c, H), T.ReversePermutation(d)]), True),
}

NAMES = list(CATALOGUE)
CONDITIONAL = [n for n, (_, ctx) in CATALOGUE.items() if ctx]


@torch.no_grad()
def perturb(flow: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Move every parameter away from its (identity-near) initial value, reproducibly."""
    g = torch.Generator().manual_seed(seed)
    for p in flow.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
    for m in flow.modules():
        if isinstance(m, T.ActNorm):
            m.initialized.fill_(1)
    return flow


def build(name: str, input_dim: int = 3, context_dim: int = 0, dtype: torch.dtype = torch.float64,
          scale: float = 0.3, seed: int = 0) -> flows.Flow:
    torch.manual_seed(seed)
    factory, _ = CATALOGUE[name]
    return perturb(factory(input_dim, context_dim).to(dtype), scale, seed)
