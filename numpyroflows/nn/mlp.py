"""Activations, PyTorch-style linear initialisation and the parameter-major output layout, in JAX.

Mirrors :mod:`pyroflows.nn.mlp`: a conditioner's output ``(..., P·D)`` with unit ``p·D + i`` holding parameter ``p`` of
dimension ``i`` becomes per-dimension parameters ``(..., D, P)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

ACTIVATIONS = {"relu": jax.nn.relu, "elu": jax.nn.elu, "tanh": jnp.tanh, "gelu": lambda x: jax.nn.gelu(x, False),
               "silu": jax.nn.silu}

#: half-width of the uniform initialisation of output layers that produce transform parameters (as in pyroflows)
OUTPUT_INIT = 1e-3


def get_activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


def linear_init(key: Array, in_features: int, out_features: int, dtype=jnp.float32) -> tuple[Array, Array]:
    """``(W (out, in), b (out,))`` drawn like ``torch.nn.Linear``: uniform in ``±1/sqrt(in_features)``."""
    kw, kb = jax.random.split(key)
    bound = 1.0 / max(in_features, 1) ** 0.5
    w = jax.random.uniform(kw, (out_features, in_features), dtype, -bound, bound)
    b = jax.random.uniform(kb, (out_features,), dtype, -bound, bound)
    return w, b


def params_view(out: Array, num_params: int, num_dims: int) -> Array:
    """``(..., P·D)`` parameter-major network output -> ``(..., D, P)`` per-dimension parameters."""
    return jnp.swapaxes(out.reshape(out.shape[:-1] + (num_params, num_dims)), -1, -2)
