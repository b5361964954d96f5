"""Coupling layers with any transformer (Dinh et al. 2014 "NICE", 2017 "RealNVP"; Durkan et al. 2019 "NSF-C"), JAX.

Mirrors :mod:`pyroflows.transforms.coupling`: the dimensions are split by a mask into a conditioning set ``A`` (passed
through unchanged) and a transformed set ``B``, with the transformer run data to noise: ``x_A = y_A``,
``x_B = τ(y_B; θ(y_A, context))``. Both directions take one network pass; the Jacobian is triangular with log-det
``Σ_B log τ'``. The mask and the index sets are static configuration (tuples); the only parameters are the conditioner
MLP's (``"net.*"``, as in pyroflows' ``state_dict``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..nn.mlp import OUTPUT_INIT, mlp_apply, mlp_init, params_view
from .base import FlowTransform, default_key
from .transformers import Transformer, make_transformer

Array = jax.Array


def coupling_mask(input_dim: int, mask: str | Sequence[bool | int] = "half", parity: int = 0,
                  seed: int = 0) -> tuple[bool, ...]:
    """Boolean mask as a tuple, True for the conditioning (identity) dimensions; the same mask as
    :func:`pyroflows.transforms.coupling.coupling_mask`.

    ``"half"``: the first ``⌈D/2⌉`` dimensions; ``"alternating"``: even indices; ``"random"``: a random half drawn with
    torch's seeded CPU generator exactly as pyroflows does (torch is imported only for this choice); or an explicit
    boolean sequence. ``parity=1`` swaps the roles of the two sets.
    """
    input_dim = int(input_dim)
    if isinstance(mask, str):
        if mask == "half":
            m = [i < (input_dim + 1) // 2 for i in range(input_dim)]
        elif mask == "alternating":
            m = [i % 2 == 0 for i in range(input_dim)]
        elif mask == "random":
            try:
                import torch
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError(
                    "mask='random' draws the same mask as pyroflows with torch's seeded generator, so it needs torch; "
                    "install torch or pass the mask explicitly as a boolean list"
                ) from e
            g = torch.Generator().manual_seed(int(seed))
            chosen = set(torch.randperm(input_dim, generator=g, device="cpu")[: (input_dim + 1) // 2].tolist())
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

    Same arguments as :class:`pyroflows.transforms.CouplingTransform`, plus ``key`` (a PRNG key for the initial
    parameters). Parameters: ``"net.*"`` (the conditioner MLP; its output is parameter-major, ``(P·|B|)``).

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
                       output_bias=bias, output_init=output_init)
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
