"""Coupling layers with any transformer (Dinh et al. 2014 "NICE", 2017 "RealNVP"; Durkan et al. 2019 "NSF-C"), JAX.

The dimensions are split by a mask into a conditioning set ``A`` (passed through unchanged) and a transformed set
``B``. With ``x`` the noise side and ``y`` the data side, ``x_A = y_A`` and ``x_B = τ(y_B; θ(y_A, context))``: the
transformer runs data to noise, as in zuko and FlowJAX, so training by maximum likelihood uses its direct formula
(RealNVP's ``x_B = shift + scale·y_B``). Both directions take one network pass; the Jacobian is triangular with
log-det ``Σ_B log τ'``. The mask and the index sets are static configuration (tuples); the only parameters are the
conditioner MLP's (``"net.*"``). Masks, arguments and parameter names are those of
``pyroflows.transforms.CouplingTransform``, so parameters move between the packages by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..nn.mlp import OUTPUT_INIT, mlp_apply, mlp_init, params_view
from .base import FlowTransform, default_key
from .linear import torch_randperm
from .transformers import Transformer, make_transformer

Array = jax.Array


def coupling_mask(input_dim: int, mask: str | Sequence[bool | int] = "half", parity: int = 0,
                  seed: int = 0) -> tuple[bool, ...]:
    """Boolean mask as a tuple (static configuration), True for the conditioning (identity) dimensions.

    ``"half"``: the first ``⌈D/2⌉`` dimensions; ``"alternating"``: even indices; ``"random"``: a random half drawn from
    the integer ``seed`` as ``torch.randperm`` draws it with a seeded CPU generator (reproduced in NumPy by
    :func:`~numpyroflows.transforms.linear.torch_randperm`, no torch needed), so that it is the same on every machine
    and in pyroflows; or an explicit boolean sequence. ``parity=1`` swaps the roles of the two
    sets. A mask that leaves either set empty raises a ``ValueError``.
    """
    input_dim = int(input_dim)
    if isinstance(mask, str):
        if mask == "half":
            m = [i < (input_dim + 1) // 2 for i in range(input_dim)]
        elif mask == "alternating":
            m = [i % 2 == 0 for i in range(input_dim)]
        elif mask == "random":
            chosen = set(torch_randperm(input_dim, seed)[: (input_dim + 1) // 2].tolist())
            m = [i in chosen for i in range(input_dim)]
        else:
            raise ValueError(f"mask must be 'half', 'alternating', 'random' or a boolean list, got {mask!r}")
    else:
        m = [bool(v) for v in np.asarray(mask).reshape(-1).tolist()]
        if len(m) != input_dim:
            raise ValueError(f"mask has {len(m)} entries but input_dim={input_dim}")
    if int(parity) % 2:
        m = [not v for v in m]
    if all(m) or not any(m):
        raise ValueError("the coupling mask must leave at least one dimension on each side (input_dim >= 2)")
    return tuple(m)


class CouplingTransform(FlowTransform):
    """``y_A = x_A``, ``y_B = τ(x_B; θ(x_A, context))`` with an MLP conditioner.

    Args:
        input_dim: D (at least 2).
        transformer: ``"affine"`` (RealNVP), ``"additive"`` (NICE), ``"spline"`` (NSF-C), ... or an instance.
        context_dim: size of the context (0: none).
        hidden_dims: conditioner MLP hidden widths.
        mask: ``"half"``, ``"alternating"``, ``"random"`` or an explicit boolean list (True = conditioning); see
            :func:`coupling_mask`.
        parity: 1 swaps the two sets (recipes alternate it between layers).
        activation: hidden nonlinearity.
        count_bins, bound: spline options.
        seed: seed of the random mask.
        output_init: half-width of the uniform start of the conditioner's output weights (its bias starts at the
            transformer's identity), or ``"fan_in"``; see :func:`~numpyroflows.nn.mlp.output_init_bound`.
        key: PRNG key of the initial parameters (``PRNGKey(0)`` if None).
        dtype: floating type of the parameters (``None``: JAX's default; see "Precision" in
            :mod:`numpyroflows.transforms.base`).

    Parameters: ``"net.*"`` (the conditioner MLP, :func:`~numpyroflows.nn.mlp.mlp_init`; its output is
    parameter-major, ``(P·|B|)``).

    Example:
        >>> t = CouplingTransform(4, "spline", mask="half", key=jax.random.PRNGKey(0))
        >>> y, ladj = t.forward_and_log_det(jnp.ones((10, 4)))
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
        *,
        key: Array | None = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(input_dim, context_dim)
        if int(input_dim) < 2:
            raise ValueError("a coupling layer needs input_dim >= 2; use ElementwiseTransform for 1-D data")
        self.transformer = make_transformer(transformer, count_bins=count_bins, bound=bound)
        m = coupling_mask(input_dim, mask, parity, seed)
        self.mask = m
        self.idx_a = tuple(i for i, v in enumerate(m) if v)
        self.idx_b = tuple(i for i, v in enumerate(m) if not v)
        self.unperm = tuple(int(i) for i in np.argsort(np.asarray(self.idx_a + self.idx_b), kind="stable"))
        self.num_b = len(self.idx_b)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.activation = activation
        p = self.transformer.num_params
        bias = jnp.repeat(jnp.asarray(self.transformer.identity_params()), self.num_b)  # parameter-major
        net = mlp_init(default_key(key), len(self.idx_a), self.num_b * p, self.hidden_dims, context_dim,
                       output_bias=bias, dtype=dtype, output_init=output_init)
        self.params = {f"net.{k}": v for k, v in net.items()}

    def _couple(self, params: dict, v: Array, context: Array | None, density: bool) -> tuple[Array, Array]:
        va, vb = v[..., np.asarray(self.idx_a)], v[..., np.asarray(self.idx_b)]
        net = {k[len("net."):]: w for k, w in params.items() if k.startswith("net.")}
        theta = params_view(mlp_apply(net, va, context, self.activation), self.transformer.num_params, self.num_b)
        out_b, ld = (self.transformer.forward if density else self.transformer.inverse)(vb, theta)
        va = jnp.broadcast_to(va, out_b.shape[:-1] + va.shape[-1:])
        return jnp.concatenate([va, out_b], -1)[..., np.asarray(self.unperm)], ld.sum(-1)

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        return self._couple(params, x, context, density=False)

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        return self._couple(params, y, context, density=True)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(input_dim={self.input_dim}, context_dim={self.context_dim}, "
                f"transformer={self.transformer!r}, mask={[int(v) for v in self.mask]})")
