"""Constant or context-dependent parameter sets (the JAX twin of :class:`pyroflows.nn.ParamHead`).

Without a context the parameters are free arrays named after their role (``"{name}"``); with ``context_dim > 0`` they
are the outputs of an MLP on the context (``"net.*"`` parameters, output bias at the initial values, output weights
near zero). Names match pyroflows' ``state_dict`` (under the transform's ``head.`` prefix).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .mlp import mlp_apply, mlp_init

Array = jax.Array


def param_head_init(key: Array, init: Mapping[str, Array], context_dim: int = 0,
                    hidden_dims: Sequence[int] = (64, 64), dtype=jnp.float32) -> dict[str, Array]:
    """Parameters of a head: ``init`` itself, or (with a context) an MLP whose output bias is ``init`` flattened."""
    if context_dim == 0:
        return {k: jnp.asarray(v, dtype) for k, v in init.items()}
    flat = jnp.concatenate([jnp.asarray(v, dtype).reshape(-1) for v in init.values()])
    net = mlp_init(key, 0, flat.shape[0], hidden_dims, context_dim, output_bias=flat, dtype=dtype)
    return {f"net.{k}": v for k, v in net.items()}


def param_head_apply(params: dict[str, Array], shapes: Mapping[str, tuple[int, ...]], context: Array | None = None,
                     activation: str = "relu") -> dict[str, Array]:
    """``{name: array}``: the free parameters, or the MLP's outputs split and reshaped (batch shape of the context
    in front)."""
    if not any(k.startswith("net.") for k in params):
        return {k: params[k] for k in shapes}
    net = {k[len("net."):]: v for k, v in params.items() if k.startswith("net.")}
    out = mlp_apply(net, None, context, activation)
    offsets = np.cumsum([math.prod(s) for s in shapes.values()])[:-1].tolist()  # static: works under jit
    parts = jnp.split(out, offsets, axis=-1)
    batch = out.shape[:-1]
    return {k: p.reshape(batch + tuple(s)) for (k, s), p in zip(shapes.items(), parts)}


def head_params(params: dict[str, Array], shapes: Mapping[str, tuple[int, ...]], context: Array | None,
                prefix: str = "head.") -> dict[str, Array]:
    """The named raw parameters of a transform's parameter head: the entries of ``params`` under ``prefix`` (free, or
    an MLP computing them from the context), as :func:`param_head_apply` returns them."""
    head = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    return param_head_apply(head, dict(shapes), context)
