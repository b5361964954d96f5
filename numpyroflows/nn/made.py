"""MADE (Germain et al. 2015) in JAX, with exactly the parameter layout of :class:`pyroflows.nn.MADE`.

Parameters (a dict, keys as in pyroflows' ``state_dict``): ``"flat"`` holds ``[W_1, b_1, ..., W_L, b_L]`` row-major
(weights ``(out, in)``, masked on use), and ``"context_layer.weight"`` ``(H_1, context_dim)`` when there is a context.
Input degrees come from the order (``ascending``, ``descending`` or a permutation), hidden degrees are
``k mod (D - 1) + 1``, output units are parameter-major (``p·D + i``): the masks are a pure function of the
configuration and are rebuilt (and cached) from it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .mlp import OUTPUT_INIT, get_activation, linear_init, output_init_bound, params_view

Array = jax.Array


def input_degrees(input_dim: int, order: str | Sequence[int] = "ascending") -> np.ndarray:
    """Degrees ``1..D`` of the inputs (see :func:`pyroflows.nn.made.input_degrees`)."""
    if isinstance(order, str):
        if order == "ascending":
            return np.arange(1, input_dim + 1)
        if order == "descending":
            return np.arange(input_dim, 0, -1)
        raise ValueError(f"order must be 'ascending', 'descending' or a permutation, got {order!r}")
    perm = np.asarray(list(order), dtype=np.int64)
    if sorted(perm.tolist()) != list(range(input_dim)):
        raise ValueError(f"order must be a permutation of 0..{input_dim - 1}, got {list(order)}")
    deg = np.empty(input_dim, dtype=np.int64)
    deg[perm] = np.arange(1, input_dim + 1)
    return deg


def _hidden_degrees(width: int, input_dim: int) -> np.ndarray:
    if input_dim == 1:
        return np.zeros(width, dtype=np.int64)
    return np.arange(width) % (input_dim - 1) + 1


@functools.lru_cache(maxsize=256)
def made_masks(
    input_dim: int, num_params: int, hidden_dims: tuple[int, ...], order: str | tuple[int, ...] = "ascending"
) -> tuple[tuple[np.ndarray, ...], tuple[tuple[int, int], ...]]:
    """The masks ``(M_1, ..., M_L)`` and weight shapes of a MADE (NumPy, static)."""
    deg_in = input_degrees(input_dim, order)
    degs = [deg_in] + [_hidden_degrees(h, input_dim) for h in hidden_dims]
    masks = [(degs[i + 1][:, None] >= degs[i][None, :]).astype(np.float64) for i in range(len(hidden_dims))]
    deg_out = np.tile(deg_in, num_params)
    masks.append((deg_out[:, None] > degs[-1][None, :]).astype(np.float64))
    sizes = [input_dim, *hidden_dims, input_dim * num_params]
    return tuple(masks), tuple(zip(sizes[1:], sizes[:-1]))


def made_sequence(input_dim: int, order: str | Sequence[int] = "ascending") -> list[int]:
    """Dimensions in autoregressive order (first to last)."""
    return np.argsort(input_degrees(input_dim, order), kind="stable").tolist()


def made_init(key: Array, input_dim: int, num_params: int, hidden_dims: Sequence[int], context_dim: int = 0,
              order: str | Sequence[int] = "ascending", output_bias: Array | None = None,
              dtype=jnp.float32, output_init: float | str | None = None) -> dict[str, Array]:
    """Initial parameters, as in :class:`pyroflows.nn.MADE`: PyTorch-style uniform layers; output bias set to
    ``output_bias`` repeated per dimension (parameter-major) when given; output weights uniform in ``±output_init``
    (``"fan_in"``: ``±1/sqrt(hidden_dims[-1])``), where ``None`` means ``OUTPUT_INIT`` with ``output_bias``, else
    :func:`~numpyroflows.nn.mlp.linear_init`'s start."""
    hidden_dims = tuple(int(h) for h in hidden_dims)
    _, shapes = made_masks(input_dim, num_params, hidden_dims, _static_order(order))
    keys = jax.random.split(key, len(shapes) + 2)
    tensors = []
    for k, (out_f, in_f) in zip(keys, shapes):
        w, b = linear_init(k, in_f, out_f, dtype)
        tensors += [w, b]
    if output_bias is not None or output_init is not None:
        out_f, in_f = shapes[-1]
        a = output_init_bound(OUTPUT_INIT if output_init is None else output_init, in_f)
        tensors[-2] = jax.random.uniform(keys[-2], (out_f, in_f), dtype, -a, a)
    if output_bias is not None:
        tensors[-1] = jnp.repeat(jnp.asarray(output_bias, dtype), input_dim)
    params = {"flat": jnp.concatenate([t.reshape(-1) for t in tensors])}
    if context_dim > 0:
        params["context_layer.weight"] = linear_init(keys[-1], context_dim, hidden_dims[0], dtype)[0]
    return params


def _static_order(order):
    return order if isinstance(order, str) else tuple(int(i) for i in order)


def _layers(params: dict[str, Array], input_dim: int, num_params: int, hidden_dims: tuple[int, ...], order):
    masks, shapes = made_masks(input_dim, num_params, hidden_dims, _static_order(order))
    flat = params["flat"]
    sizes = [n for o, i in shapes for n in (o * i, o)]
    if sum(sizes) != flat.shape[0]:
        raise ValueError(f"MADE 'flat' has {flat.shape[0]} entries but the configuration needs {sum(sizes)}")
    # one split, not a slice per tensor: the gradient of a split is a single concatenation, where XLA turns the
    # gradients of separate slices into zero-padded copies summed together (~10-25% of a MADE's training step on CPU)
    parts = jnp.split(flat, np.cumsum(sizes)[:-1].tolist())
    return [(parts[2 * j].reshape(o, i) * jnp.asarray(m, flat.dtype), parts[2 * j + 1])
            for j, (m, (o, i)) in enumerate(zip(masks, shapes))]


def made_hidden(params: dict[str, Array], x: Array, context: Array | None, *, input_dim: int, num_params: int,
                hidden_dims: tuple[int, ...], order="ascending", activation: str = "relu", layers=None) -> Array:
    """Last hidden activation of the MADE."""
    act = get_activation(activation)
    layers = _layers(params, input_dim, num_params, hidden_dims, order) if layers is None else layers
    w, b = layers[0]
    h = x @ w.T + b
    if "context_layer.weight" in params:
        h = h + context @ params["context_layer.weight"].T
    for w, b in layers[1:-1]:
        h = act(h) @ w.T + b
    return act(h)


def made_output(layers, h: Array, *, input_dim: int, num_params: int, dim: int | None = None,
                params_first: bool = False) -> Array:
    """Parameters ``(..., D, P)`` from the last hidden activation, or ``(..., 1, P)`` for one dimension.

    ``params_first=True`` gives them as ``(P, D, ...)`` (``(P, 1, ...)``) instead: the output layer's
    parameter-major units make that layout a plain reshape of ``W h`` (no transpose), and the spline runs faster on
    it (see ``numpyroflows.transforms.transformers.Transformer._params_first``).
    """
    w, b = layers[-1]
    if dim is not None:  # units p·D + dim
        w, b = w[dim::input_dim], b[dim::input_dim]
    return _made_output_rows(w, b, h, num_params=num_params, num_dims=input_dim if dim is None else 1,
                            params_first=params_first)


def _made_output_rows(w: Array, b: Array, h: Array, *, num_params: int, num_dims: int,
                     params_first: bool = False) -> Array:
    """:func:`made_output` from given rows ``(w, b)`` of the output layer (parameter-major, ``num_params ·
    num_dims`` units): all of them, or one dimension's ``P`` rows, which a ``lax.scan`` over the dimensions slices
    ahead of the loop."""
    if params_first:
        out = jnp.tensordot(w, h, axes=[[1], [h.ndim - 1]]) + b.reshape(b.shape + (1,) * (h.ndim - 1))
        return out.reshape((num_params, num_dims) + h.shape[:-1])
    return params_view(h @ w.T + b, num_params, num_dims)


def made_apply(params: dict[str, Array], x: Array, context: Array | None = None, *, input_dim: int, num_params: int,
               hidden_dims: Sequence[int], order="ascending", activation: str = "relu") -> Array:
    """``θ = MADE(x, context)`` with shape ``(..., D, P)``."""
    hidden_dims = tuple(int(h) for h in hidden_dims)
    layers = _layers(params, input_dim, num_params, hidden_dims, order)
    h = made_hidden(params, x, context, input_dim=input_dim, num_params=num_params, hidden_dims=hidden_dims,
                    order=order, activation=activation, layers=layers)
    return made_output(layers, h, input_dim=input_dim, num_params=num_params)

