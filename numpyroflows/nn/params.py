"""Constant or context-dependent parameter sets ("parameter heads") for transforms that are not coupling/autoregressive.

A head holds the raw parameters of a transform (planar, radial, Sylvester, linear and elementwise layers) as a flat
``{name: array}`` dict. Without a context they are free arrays named after their role (``"{name}"``). With
``context_dim > 0`` they are the outputs of a small MLP on the context (``"net.*"`` parameters; amortized parameters,
as in conditional planar flows or VAE encoders): the MLP's output bias starts at the initial values and its output
weights near zero, so a conditional transform starts where the unconditional one would.

:func:`param_head_init` draws a head from a PRNG key, :func:`param_head_apply` evaluates it (pure, jit-able) and
:func:`head_params` reads a transform's head out of its parameter dict. The names are those of
``pyroflows.nn.ParamHead`` (under the transform's ``head.`` prefix), so parameters move between the packages by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .._dtype import float_dtype
from .mlp import mlp_apply, mlp_init

Array = jax.Array


def param_head_init(key: Array, init: Mapping[str, Array], context_dim: int = 0,
                    hidden_dims: Sequence[int] = (64, 64), dtype=None) -> dict[str, Array]:
    """Initial parameters of a head: ``init`` itself, or (with a context) an MLP whose output bias is ``init``
    flattened.

    Args:
        key: PRNG key of the context network (unused without a context).
        init: initial value of each named parameter (any shapes; pass NumPy float64 values to keep a float64 start
            exact); with a context they are concatenated, flattened, in the order of ``init``.
        context_dim: 0 for free parameters, else the size of the context.
        hidden_dims: hidden widths of the context network.
        dtype: floating dtype of every array (``None``: JAX's default; the rule of
            :mod:`numpyroflows.transforms.base`); ``init`` is rounded to it once.

    Returns:
        ``{name: array}`` without a context, ``{"net.<mlp name>": array}`` with one (see
        :func:`~numpyroflows.nn.mlp.mlp_init`).
    """
    dtype = float_dtype(dtype)
    if context_dim == 0:
        return {k: jnp.asarray(v, dtype) for k, v in init.items()}
    flat = jnp.concatenate([jnp.asarray(v, dtype).reshape(-1) for v in init.values()])
    net = mlp_init(key, 0, flat.shape[0], hidden_dims, context_dim, output_bias=flat, dtype=dtype)
    return {f"net.{k}": v for k, v in net.items()}


def param_head_apply(params: dict[str, Array], shapes: Mapping[str, tuple[int, ...]], context: Array | None = None,
                     activation: str = "relu") -> dict[str, Array]:
    """``{name: array}``: the free parameters, or the MLP's outputs split and reshaped (batch shape of the context
    in front).

    ``shapes`` gives each parameter's shape, in the order of the ``init`` the head was made from; ``activation`` is the
    context network's hidden nonlinearity. With a context of batch shape ``B`` each array has shape
    ``B + shapes[name]``. Pure and jit-compatible (the split points are static).
    """
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
