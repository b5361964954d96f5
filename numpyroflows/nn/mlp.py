"""Activations, PyTorch-style linear initialisation and the parameter-major output layout, in JAX.

Mirrors :mod:`pyroflows.nn.mlp`: a conditioner's output ``(..., P·D)`` with unit ``p·D + i`` holding parameter ``p`` of
dimension ``i`` becomes per-dimension parameters ``(..., D, P)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

ACTIVATIONS = {"relu": jax.nn.relu, "elu": jax.nn.elu, "tanh": jnp.tanh, "gelu": lambda x: jax.nn.gelu(x, False),
               "silu": jax.nn.silu}

#: default half-width of the uniform initialisation of output layers that produce transform parameters (as in
#: pyroflows)
OUTPUT_INIT = 1e-3


def output_init_bound(output_init: float | str, fan_in: int) -> float:
    """Half-width ``a`` of the uniform start ``U(-a, a)`` of an output layer's weights: ``output_init`` itself (a
    number ``>= 0``) or, for ``"fan_in"``, ``1/sqrt(fan_in)`` (the start of :func:`linear_init`, ``torch.nn.Linear``
    and FlowJAX's conditioners). When to use which: :func:`pyroflows.nn.mlp.output_init_bound`."""
    if isinstance(output_init, str):
        if output_init == "fan_in":
            return 1.0 / math.sqrt(max(int(fan_in), 1))
        raise ValueError(f"output_init must be a number >= 0 or 'fan_in', got {output_init!r}")
    bound = float(output_init)
    if not math.isfinite(bound) or bound < 0:
        raise ValueError(f"output_init must be a finite number >= 0 (a half-width) or 'fan_in', got {output_init!r}")
    return bound


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


def mlp_init(key: Array, in_features: int, out_features: int, hidden_dims=(64, 64), context_dim: int = 0,
             output_bias: Array | None = None, dtype=jnp.float32,
             output_init: float | str | None = None) -> dict[str, Array]:
    """Parameters of :class:`pyroflows.nn.MLP` under the same names: ``input_layer.*`` (when ``in_features > 0``),
    ``context_layer.weight`` (and ``.bias`` for a context-only network), ``layers.{i}.*``. With ``output_bias`` the
    output layer starts at that bias. Its weights start uniform in ``±output_init`` (``"fan_in"``:
    ``±1/sqrt(fan_in)``); ``None`` means ``OUTPUT_INIT`` with ``output_bias``, else :func:`linear_init`'s start."""
    if in_features == 0 and context_dim == 0:
        raise ValueError("MLP needs in_features > 0 or context_dim > 0")
    hidden_dims = tuple(int(h) for h in hidden_dims)
    widths = (hidden_dims[0] if hidden_dims else out_features,) + hidden_dims[1:] + (
        (out_features,) if hidden_dims else ())
    keys = jax.random.split(key, len(widths) + 2)
    p: dict[str, Array] = {}
    if in_features > 0:
        p["input_layer.weight"], p["input_layer.bias"] = linear_init(keys[0], in_features, widths[0], dtype)
    if context_dim > 0:
        w, b = linear_init(keys[1], context_dim, widths[0], dtype)
        p["context_layer.weight"] = w
        if in_features == 0:
            p["context_layer.bias"] = b
    for i, (a, b_) in enumerate(zip(widths[:-1], widths[1:])):
        p[f"layers.{i}.weight"], p[f"layers.{i}.bias"] = linear_init(keys[i + 2], a, b_, dtype)
    if output_bias is not None or output_init is not None:
        if output_init is None:
            output_init = OUTPUT_INIT
        if hidden_dims:
            last = f"layers.{len(widths) - 2}"
        else:
            last = "input_layer" if in_features > 0 else "context_layer"
        if output_bias is not None and f"{last}.bias" not in p:
            raise ValueError("output_bias needs a biased output layer")
        shape = p[f"{last}.weight"].shape
        a = output_init_bound(output_init, shape[1])
        p[f"{last}.weight"] = jax.random.uniform(keys[-1], shape, dtype, -a, a)
        if output_bias is not None:
            p[f"{last}.bias"] = jnp.asarray(output_bias, dtype)
        if not hidden_dims and in_features > 0 and context_dim > 0:  # the context also feeds the output directly
            a = output_init_bound(output_init, context_dim)
            p["context_layer.weight"] = jax.random.uniform(keys[1], p["context_layer.weight"].shape, dtype, -a, a)
    return p


def mlp_apply(params: dict[str, Array], x: Array | None = None, context: Array | None = None,
              activation: str = "relu") -> Array:
    """The MLP of :func:`mlp_init` (same computation as :class:`pyroflows.nn.MLP`); the context broadcasts against
    the batch shape of ``x``."""
    act = get_activation(activation)
    h = None
    if "input_layer.weight" in params:
        h = x @ params["input_layer.weight"].T + params["input_layer.bias"]
    if "context_layer.weight" in params:
        hc = context @ params["context_layer.weight"].T
        if "context_layer.bias" in params:
            hc = hc + params["context_layer.bias"]
        h = hc if h is None else h + hc
    i = 0
    while f"layers.{i}.weight" in params:
        h = act(h) @ params[f"layers.{i}.weight"].T + params[f"layers.{i}.bias"]
        i += 1
    return h
