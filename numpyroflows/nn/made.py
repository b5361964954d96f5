"""MADE: masked autoencoder for distribution estimation (Germain et al. 2015), as a flow conditioner, in JAX.

Each input dimension ``i`` gets a degree ``m(i)`` in ``1..D``; hidden units get degrees in ``1..D-1``; a hidden unit
of degree ``k`` sees inputs of degree ``<= k``, and the parameters of input ``i`` see hidden units of degree
``< m(i)``. The parameters of dimension ``i`` therefore depend only on the dimensions that come before it in the
order, which is what makes the flow's Jacobian triangular. The context (if any) feeds every first-layer unit.

Parameters (a dict): ``"flat"`` holds ``[W_1, b_1, ..., W_L, b_L]`` row-major (weights ``(out, in)``, masked on use),
and ``"context_layer.weight"`` ``(H_1, context_dim)`` when there is a context. Input degrees come from the order
(``ascending``, ``descending`` or a permutation), hidden degrees are ``k mod (D - 1) + 1``, output units are
parameter-major (``p·D + i``): the masks are a pure function of the configuration and are rebuilt (and cached) from it,
so only the weights are arrays and the configuration is passed as static keyword arguments (``input_dim``,
``num_params``, ``hidden_dims``, ``order``), which keeps every function jit-compatible.

The layout is that of ``pyroflows.nn.MADE`` (same keys as its ``state_dict``, same masks and initial distributions), so
parameters move between the packages by name.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .._dtype import float_dtype, uniform
from .mlp import OUTPUT_INIT, get_activation, linear_init, output_init_bound, params_view

Array = jax.Array


def input_degrees(input_dim: int, order: str | Sequence[int] = "ascending") -> np.ndarray:
    """Degrees ``1..D`` of the inputs, a NumPy integer array ``(D,)``.

    ``order`` is ``"ascending"`` (dimension ``i`` has degree ``i + 1``), ``"descending"``, or an explicit permutation
    of ``0..D-1`` listing the dimensions from first to last in the autoregressive order; anything else raises a
    ``ValueError``.
    """
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
    """The masks ``(M_1, ..., M_L)`` and weight shapes ``((out, in), ...)`` of a MADE (NumPy, static).

    ``M_l[j, k] = 1`` where unit ``j`` of layer ``l`` may see unit ``k`` of layer ``l - 1``: hidden units see degrees
    ``<=`` their own, output units (parameter-major, ``p·D + i``) see hidden degrees ``< m(i)``. Cached on the
    (hashable) configuration, so pass ``hidden_dims`` and a permutation ``order`` as tuples.
    """
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
              dtype=None, output_init: float | str | None = None) -> dict[str, Array]:
    """Initial parameters ``{"flat", "context_layer.weight"}`` of a MADE (module docstring for the layout).

    Every layer starts uniform in ``±1/sqrt(fan_in)`` (:func:`~numpyroflows.nn.mlp.linear_init`, the start of
    ``torch.nn.Linear``), except for the output layer when ``output_bias`` or ``output_init`` is given.

    Args:
        key: PRNG key of every draw.
        input_dim: ``D``.
        num_params: parameters produced per dimension (``P``); the output has shape ``(..., D, P)``.
        hidden_dims: widths of the hidden layers.
        context_dim: size of an optional context vector fed to the first hidden layer (no bias of its own).
        order: ``ascending``, ``descending`` or an explicit permutation (see :func:`input_degrees`).
        output_bias: initial output bias per parameter (``(P,)``), repeated over the dimensions (parameter-major).
        dtype: floating dtype of every array (``None``: JAX's default; the rule of
            :mod:`numpyroflows.transforms.base`).
        output_init: half-width of the uniform start of the output weights, or ``"fan_in"`` for
            ``±1/sqrt(hidden_dims[-1])`` (see :func:`~numpyroflows.nn.mlp.output_init_bound`). ``None`` (default):
            ``OUTPUT_INIT = 1e-3`` when ``output_bias`` is given (the MADE starts near that constant), else the
            ``linear_init`` start of weights and bias.
    """
    dtype = float_dtype(dtype)
    hidden_dims = tuple(int(h) for h in hidden_dims)
    if not hidden_dims:
        raise ValueError("MADE needs at least one hidden layer (hidden_dims=(64, 64) is a good default)")
    _, shapes = made_masks(input_dim, num_params, hidden_dims, _static_order(order))
    keys = jax.random.split(key, len(shapes) + 2)
    tensors = []
    for k, (out_f, in_f) in zip(keys, shapes):
        w, b = linear_init(k, in_f, out_f, dtype)
        tensors += [w, b]
    if output_bias is not None or output_init is not None:
        out_f, in_f = shapes[-1]
        a = output_init_bound(OUTPUT_INIT if output_init is None else output_init, in_f)
        tensors[-2] = uniform(keys[-2], (out_f, in_f), dtype, -a, a)
    if output_bias is not None:
        tensors[-1] = jnp.repeat(jnp.asarray(output_bias, dtype), input_dim)
    params = {"flat": jnp.concatenate([t.reshape(-1) for t in tensors])}
    if context_dim > 0:
        params["context_layer.weight"] = linear_init(keys[-1], context_dim, hidden_dims[0], dtype)[0]
    return params


def made_zero_output(params: dict[str, Array], *, input_dim: int, num_params: int, hidden_dims: Sequence[int],
                     prefix: str = "") -> dict[str, Array]:
    """A new dict: ``params`` with the MADE's output weights ``W_L`` (in ``prefix + "flat"``) set to zero, every other
    entry kept.

    The MADE then computes its output bias ``b_L`` for every input and context: a flow layer built with the
    transformer's identity parameters as that bias is then exactly the identity, and training moves ``W_L`` first
    (as Glow's zero-initialised last layers, Kingma & Dhariwal 2018). The configuration arguments are those of
    :func:`made_init`; pure, so it may run under ``jax.jit``."""
    flat = params[f"{prefix}flat"]  # layout [W_1, b_1, ..., W_L, b_L], W_L of shape (D P, hidden_dims[-1])
    n_out = int(input_dim) * int(num_params)
    stop = flat.shape[0] - n_out
    return {**params, f"{prefix}flat": flat.at[stop - n_out * int(tuple(hidden_dims)[-1]): stop].set(0.0)}


def _static_order(order):
    return order if isinstance(order, str) else tuple(int(i) for i in order)


def _layers(params: dict[str, Array], input_dim: int, num_params: int, hidden_dims: tuple[int, ...], order):
    masks, shapes = made_masks(input_dim, num_params, hidden_dims, _static_order(order))
    flat = params["flat"]
    sizes = [n for o, i in shapes for n in (o * i, o)]
    if sum(sizes) != flat.shape[0]:
        raise ValueError(f"MADE 'flat' has {flat.shape[0]} entries but the configuration needs {sum(sizes)}")
    # one split, not a slice per tensor: the gradient of a split is a single concatenation, where XLA turns the
    # gradients of separate slices into zero-padded copies summed together (a sizeable share of a training step)
    parts = jnp.split(flat, np.cumsum(sizes)[:-1].tolist())
    return [(parts[2 * j].reshape(o, i) * jnp.asarray(m, flat.dtype), parts[2 * j + 1])
            for j, (m, (o, i)) in enumerate(zip(masks, shapes))]


def made_hidden(params: dict[str, Array], x: Array, context: Array | None, *, input_dim: int, num_params: int,
                hidden_dims: tuple[int, ...], order="ascending", activation: str = "relu", layers=None) -> Array:
    """Last hidden activation of the MADE (before the output layer), ``(..., hidden_dims[-1])``.

    ``x`` is ``(..., D)`` and ``context`` ``(..., context_dim)`` (or ``None``), broadcasting against it. ``layers``, the
    masked ``[(W_l ⊙ M_l, b_l)]`` of the parameters, may be passed in to reuse them across calls within one step.
    """
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
    parameter-major units make that layout a plain reshape of ``W h`` (no transpose), and it is the layout that
    :func:`~numpyroflows.functional.spline.rqs_forward` takes with ``param_axis=0`` (its fastest path).
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
    """``θ = MADE(x, context)`` with shape ``(..., D, P)``: ``θ[..., i, :]`` depends only on the dimensions ``j``
    with ``m(j) < m(i)`` (and on the context).

    ``x`` is ``(..., D)``, ``context`` ``(..., context_dim)`` or ``None``; the configuration keywords are those of
    :func:`made_init` and must be static under ``jax.jit``. Pure and differentiable in ``params``, ``x`` and
    ``context``.
    """
    hidden_dims = tuple(int(h) for h in hidden_dims)
    layers = _layers(params, input_dim, num_params, hidden_dims, order)
    h = made_hidden(params, x, context, input_dim=input_dim, num_params=num_params, hidden_dims=hidden_dims,
                    order=order, activation=activation, layers=layers)
    return made_output(layers, h, input_dim=input_dim, num_params=num_params)

