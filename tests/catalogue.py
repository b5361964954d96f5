"""The catalogue under test: one table of small flows, each built the same way in pyroflows (torch) and in
numpyroflows (JAX), that together exercise every recipe, transform, transformer and guide flow of both packages
(``test_catalogue_coverage.py`` checks that they do, by walking the built flows).

An entry is one line, ``Entry(lambda b, d, c, s: b.flows.MAF(d, c, 2, H, **b.key(s)))``: ``b`` is a
:class:`Backend` (``b.flows``: the package's recipes and ``Flow``; ``b.T``: its transforms), ``d`` and ``c`` the
input and context dimensions, ``s`` a seed. The torch backend calls ``torch.manual_seed(s)`` before the factory and its
``b.key(s, i)`` is ``{}``; the JAX backend's is ``{"key": fold_in(PRNGKey(s), i)}``, ``i`` numbering the transforms of
a hand-built stack. Both packages take the same positional arguments, so the line is the same for both.

An entry says what the suites must know about it:

* ``takes_context``: whether the flow takes a context. An entry that does not (a stack of fixed permutations and a free
  diagonal scaling) builds a flow with ``context_dim == 0`` whatever ``c`` it is given, and is tested that way;
* ``support``: ``None`` for a flow onto ``R^d``, or ``(low, high)`` for one onto the open box ``(low, high)^d`` (a final
  sigmoid or tanh). Data-side test points are mapped into the support with :func:`to_support`; such a flow is only
  invertible in floating point where its squashing layer is not saturated, so base-side points stay moderate.

Every entry runs in both packages: in each package's suite (``tests/test_pyroflows/test_catalogue.py``,
``tests/test_numpyroflows/test_catalogue.py``), in the parity suite (``tests/test_parity/test_catalogue.py``: built in
torch, perturbed, exported and imported into the JAX build) and on GPUs (``tests/test_pyroflows/test_gpu.py``,
``tests/test_numpyroflows/test_gpu.py``); the whole-flow property tests (``tests/test_pyroflows/test_properties.py``,
``tests/test_numpyroflows/test_properties.py``) take their flows from it by name. Neither torch nor JAX is imported
until a backend is asked for (the JAX tests run without torch), and JAX's precision is left to the caller.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

H = (8, 8)
SPLINE = {"count_bins": 5, "bound": 3.0}
SOFTPLUS = {"name": "affine", "scale": "softplus"}
#: integer-valued buffers kept (as floats) among numpyroflows' parameters: never perturbed, no gradient expected
BUFFERS = ("perm", "inv_perm", "initialized")


class Backend:
    """One package as the catalogue's factories see it: ``flows`` (recipes and ``Flow``), ``T`` (transforms), and
    ``key(seed, i)``, the keyword arguments that seed the ``i``-th transform of a stack."""

    name = ""

    def __init__(self, pkg: Any) -> None:
        self.pkg = pkg
        self.flows = pkg.flows
        self.T = pkg.transforms

    def key(self, seed: int, i: int = 0) -> dict:
        raise NotImplementedError

    def build(self, entry: Entry, input_dim: int, context_dim: int, seed: int = 0) -> Any:
        """The entry's flow with its initial parameters."""
        return entry.factory(self, input_dim, context_dim, seed)


class TorchBackend(Backend):
    name = "torch"

    def key(self, seed: int, i: int = 0) -> dict:
        return {}  # torch draws from its global generator, seeded by build()

    def build(self, entry: Entry, input_dim: int, context_dim: int, seed: int = 0) -> Any:
        import torch

        torch.manual_seed(seed)
        return super().build(entry, input_dim, context_dim, seed)


class JaxBackend(Backend):
    name = "jax"

    def key(self, seed: int, i: int = 0) -> dict:
        import jax

        return {"key": jax.random.fold_in(jax.random.PRNGKey(seed), i)}


@functools.cache
def torch_backend() -> TorchBackend:
    import pyroflows

    return TorchBackend(pyroflows)


@functools.cache
def jax_backend() -> JaxBackend:
    import numpyroflows

    return JaxBackend(numpyroflows)


@dataclass(frozen=True)
class Entry:
    """``factory(backend, input_dim, context_dim, seed)`` builds the flow; see the module docstring for the rest."""

    factory: Callable[[Backend, int, int, int], Any]
    takes_context: bool = True
    support: tuple[float, float] | None = None


def _cholesky(d: int) -> tuple[list[float], list[list[float]]]:
    """A location and a lower-triangular factor with a positive diagonal, fixed for each ``d``."""
    loc = [0.5 - 0.25 * i for i in range(d)]
    tril = [[(0.8 + 0.1 * i) if j == i else (0.3 * (-1) ** (i + j) if j < i else 0.0) for j in range(d)]
            for i in range(d)]
    return loc, tril


def _rotation(d: int) -> list[int]:
    return [(i + 1) % d for i in range(d)]


CATALOGUE: dict[str, Entry] = {
    "MAF": Entry(lambda b, d, c, s: b.flows.MAF(d, c, num_transforms=2, hidden_dims=H, **b.key(s))),
    "MAF-softplus": Entry(lambda b, d, c, s: b.flows.MAF(d, c, 2, H, transformer=SOFTPLUS, **b.key(s))),
    "MAF-randperm": Entry(lambda b, d, c, s: b.flows.MAF(d, c, num_transforms=3, hidden_dims=H, randperm=True,
                                                         **b.key(s))),
    "MAF-additive": Entry(lambda b, d, c, s: b.flows.MAF(d, c, 2, H, transformer="additive", **b.key(s))),
    "MAF-bspline": Entry(lambda b, d, c, s: b.flows.MAF(d, c, 2, H, transformer="bspline", **SPLINE, **b.key(s))),
    "MAF-mixture": Entry(lambda b, d, c, s: b.flows.MAF(d, c, 2, H, transformer="mixture", count_bins=3, **b.key(s))),
    "IAF": Entry(lambda b, d, c, s: b.flows.IAF(d, c, num_transforms=2, hidden_dims=H, **b.key(s))),
    "IAF-spline": Entry(lambda b, d, c, s: b.flows.IAF(d, c, 2, H, transformer="spline", **SPLINE, **b.key(s))),
    "NSF": Entry(lambda b, d, c, s: b.flows.NSF(d, c, num_transforms=2, hidden_dims=H, **SPLINE, **b.key(s))),
    "NSF-randperm": Entry(lambda b, d, c, s: b.flows.NSF(d, c, 3, H, **SPLINE, randperm=True, **b.key(s))),
    "Coupling-spline": Entry(lambda b, d, c, s: b.flows.Coupling(d, c, 2, H, transformer="spline", **SPLINE,
                                                                 **b.key(s))),
    "Coupling-mixture": Entry(lambda b, d, c, s: b.flows.Coupling(d, c, 2, H, transformer="mixture", mask="alternating",
                                                                  count_bins=3, **b.key(s))),
    "RealNVP": Entry(lambda b, d, c, s: b.flows.RealNVP(d, c, num_transforms=3, hidden_dims=H, **b.key(s))),
    "NICE": Entry(lambda b, d, c, s: b.flows.NICE(d, c, num_transforms=3, hidden_dims=H, **b.key(s))),
    "BNAF": Entry(lambda b, d, c, s: b.flows.BNAF(d, c, num_transforms=2, hidden_factor=4, **b.key(s))),
    "BNAF-iaf-normal": Entry(lambda b, d, c, s: b.flows.BNAF(d, c, 1, hidden_factor=4, residual="normal",
                                                             orientation="iaf", **b.key(s))),
    "Planar": Entry(lambda b, d, c, s: b.flows.Planar(d, c, num_transforms=3, hidden_dims=H, **b.key(s))),
    "Radial": Entry(lambda b, d, c, s: b.flows.Radial(d, c, num_transforms=3, hidden_dims=H, **b.key(s))),
    "Sylvester": Entry(lambda b, d, c, s: b.flows.Sylvester(d, c, num_transforms=2, hidden_dims=H, **b.key(s))),
    "Sylvester-orthogonal": Entry(lambda b, d, c, s: b.flows.Sylvester(d, c, 2, H, num_ortho=max(1, d - 1),
                                                                       q_type="orthogonal", **b.key(s))),
    "Elementwise-spline": Entry(lambda b, d, c, s: b.flows.Elementwise(d, c, 1, H, **SPLINE, **b.key(s))),
    "Elementwise-bspline": Entry(lambda b, d, c, s: b.flows.Elementwise(d, c, 1, H, transformer="bspline", bound=3.0,
                                                                        **b.key(s))),
    "Elementwise-affine": Entry(lambda b, d, c, s: b.flows.Elementwise(d, c, 1, H, transformer="affine", **b.key(s))),
    # the orientation-named autoregressive classes (the recipes build AutoregressiveTransform itself)
    "Autoregressive-classes": Entry(lambda b, d, c, s: b.flows.Flow([
        b.T.MaskedAutoregressiveTransform(d, "additive", c, H, **b.key(s, 0)),
        b.T.InverseAutoregressiveTransform(d, "bspline", c, H, **SPLINE, **b.key(s, 1))])),
    "LULinear": Entry(lambda b, d, c, s: b.flows.Flow([
        b.T.LULinear(d, c, H, permutation="identity", **b.key(s, 0)), b.T.ActNorm(d, **b.key(s, 1)),
        b.T.LULinear(d, c, H, permutation=_rotation(d), **b.key(s, 2))])),
    "Householder": Entry(lambda b, d, c, s: b.flows.Flow([
        b.T.Householder(d, c, H, count=2, **b.key(s, 0)), b.T.DiagonalAffine(d, c, H, **b.key(s, 1))])),
    "LeakyReLU": Entry(lambda b, d, c, s: b.flows.Flow([
        b.T.DiagonalAffine(d, c, H, **b.key(s, 0)), b.T.LeakyReLU(d, c, H, **b.key(s, 1)),
        b.T.RandomPermutation(d, seed=1, **b.key(s, 2)), b.T.LULinear(d, c, H, **b.key(s, 3))])),
    "ActNorm": Entry(lambda b, d, c, s: b.flows.Flow([
        b.T.ActNorm(d, c, H, **b.key(s, 0)), b.T.ReversePermutation(d, **b.key(s, 1))])),
    # any transform turned around: one fast both ways (LULinear) and a MAF layer (sampling-fast once inverted)
    "Invert": Entry(lambda b, d, c, s: b.flows.Flow([b.T.Invert(b.T.LULinear(d, c, H, **b.key(s, 0))), b.T.Invert(
        b.T.AutoregressiveTransform(d, "spline", c, H, **SPLINE, **b.key(s, 1)))])),
    # a fixed (untrained) affine map to N(loc, L Lᵀ) after a conditional diagonal one (the guide's whitening)
    "LowerCholeskyAffine": Entry(lambda b, d, c, s: b.flows.Flow([
        b.T.DiagonalAffine(d, c, H, **b.key(s, 0)),
        b.T.LowerCholeskyAffine(d, **b.key(s, 1)).with_values(*_cholesky(d))])),
    # fixed permutations around a free diagonal scaling: no layer takes a context
    "Permutations": Entry(lambda b, d, c, s: b.flows.Flow([
        b.T.Permutation(d, _rotation(d), **b.key(s, 0)), b.T.DiagonalAffine(d, **b.key(s, 1)),
        b.T.RandomPermutation(d, seed=7, **b.key(s, 2))]), takes_context=False),
    # onto the box (0, tanh(1))^d; the sigmoid first (its inverse loses less to rounding near saturation than tanh's)
    # after a scaling by 0.5, which keeps the tests' base-side points away from saturation
    "Sigmoid-Tanh": Entry(lambda b, d, c, s: b.flows.Flow([
        b.T.DiagonalAffine(d, c, H, scale=0.5, **b.key(s, 0)), b.T.Sigmoid(d, **b.key(s, 1)),
        b.T.Tanh(d, **b.key(s, 2))]), support=(0.0, math.tanh(1.0))),
}

NAMES = list(CATALOGUE)
CONDITIONAL = [n for n, e in CATALOGUE.items() if e.takes_context]


def context_dims(name: str) -> tuple[int, ...]:
    """The context sizes an entry is tested with: 0, and 2 if it takes a context."""
    return (0, 2) if CATALOGUE[name].takes_context else (0,)


def to_support(name: str, u: Any) -> Any:
    """Points ``u`` anywhere in ``R^d`` (a torch tensor or a NumPy/JAX array) mapped into the entry's support,
    elementwise, strictly inside it even for ``|u|`` of 1e3: ``low + (high - low) (1 + u / (1 + |u|)) / 2``."""
    support = CATALOGUE[name].support
    if support is None:
        return u
    low, high = support
    return low + (high - low) * (1 + u / (1 + abs(u))) / 2


def grid_2d(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n²`` points covering the entry's 2-D support and their quadrature weights (float64): on ``R^2`` the midpoint
    rule in ``u`` after ``y = 3 tan(u)`` per axis (heavy tails included), on a box the midpoint rule itself."""
    support = CATALOGUE[name].support
    mid = (np.arange(n) + 0.5) / n
    if support is None:
        u = mid * math.pi - math.pi / 2
        g, w = 3.0 * np.tan(u), 3.0 / np.cos(u) ** 2 * (math.pi / n)
    else:
        low, high = support
        g, w = low + (high - low) * mid, np.full(n, (high - low) / n)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    return np.stack([xx.reshape(-1), yy.reshape(-1)], -1), np.outer(w, w).reshape(-1)


# ------------------------------------------------------------------------------------------------- torch
def perturb(flow: Any, scale: float = 0.3, seed: int = 0) -> Any:
    """Move every parameter of a pyroflows flow away from its (identity-near) initial value, reproducibly, and mark
    its ActNorms initialised (so that no data-dependent initialisation overwrites them)."""
    import torch

    from pyroflows import transforms as T

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
        for m in flow.modules():
            if isinstance(m, T.ActNorm):
                m.initialized.fill_(1)
    return flow


def build(name: str, input_dim: int = 3, context_dim: int = 0, dtype: Any = None, scale: float = 0.3,
          seed: int = 0) -> Any:
    """The entry's pyroflows flow, in ``dtype`` (float64 by default), perturbed by ``scale``."""
    import torch

    flow = torch_backend().build(CATALOGUE[name], input_dim, context_dim, seed)
    return perturb(flow.to(torch.float64 if dtype is None else dtype), scale, seed)


# ------------------------------------------------------------------------------------------------- JAX
def perturb_jax(flow: Any, scale: float = 0.3, seed: int = 0, dtype: str = "float64") -> Any:
    """A numpyroflows flow with every parameter (not the buffers) moved by ``scale`` standard normal noise (NumPy,
    in sorted name order), in ``dtype``."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    params = {}
    for k in sorted(flow.params):
        v = np.asarray(flow.params[k], dtype=np.float64)
        if k.split(".")[-1] not in BUFFERS:
            v = v + scale * rng.normal(size=v.shape)
        params[k] = jnp.asarray(v, dtype=dtype)
    return flow.with_params(params)


@functools.cache
def build_jax(name: str, input_dim: int = 3, context_dim: int = 0, dtype: str = "float64", scale: float = 0.3,
              seed: int = 0) -> Any:
    """The entry's numpyroflows flow: ActNorms initialised from data (``initialize_flow``, as pyroflows' first
    ``log_prob`` does), then every parameter perturbed by ``scale``, in ``dtype`` (float64 needs JAX's x64 mode, which
    the caller sets)."""
    import jax.numpy as jnp

    b = jax_backend()
    flow = b.build(CATALOGUE[name], input_dim, context_dim, seed)
    if any(isinstance(t, b.T.ActNorm) for t in flow.transforms):
        rng = np.random.default_rng(seed)
        x = to_support(name, rng.normal(size=(64, input_dim)) * 1.5 + 0.5)
        ctx = jnp.asarray(rng.normal(size=(64, context_dim))) if flow.context_dim else None
        flow = b.T.initialize_flow(flow, jnp.asarray(x), ctx)
    return perturb_jax(flow, scale, seed, dtype)


# ------------------------------------------------------------------------------------------------- parity
def build_pair(name: str, context_dim: int, scale: float = 0.3, seed: int = 0) -> tuple[Any, Any]:
    """The entry in both packages with the same float64 parameters: built and perturbed in pyroflows, exported, and
    imported into the numpyroflows build (whose own initial values are discarded)."""
    import numpyroflows
    import pyroflows

    tflow = build(name, 3, context_dim, scale=scale, seed=seed)
    jflow = jax_backend().build(CATALOGUE[name], 3, context_dim, seed)
    return tflow, numpyroflows.import_params(jflow, pyroflows.export_params(tflow))
