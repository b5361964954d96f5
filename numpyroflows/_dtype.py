"""The floating type of numpyroflows' parameters: resolving a ``dtype=`` argument, drawing initial values, casting.

The rule these helpers implement is stated once, in :mod:`numpyroflows.transforms.base` ("Precision").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

#: Names of the integer-valued buffers kept among the parameters as floating-point arrays (permutations and ActNorm's
#: flag; see :mod:`numpyroflows.transforms.linear`). They are stored in :func:`buffer_dtype` of the flow's dtype.
BUFFERS = ("perm", "inv_perm", "initialized")

#: The type in which random initial values are drawn, whatever the parameters' dtype.
DRAW_DTYPE = jnp.float32


def float_dtype(dtype: Any = None) -> np.dtype:
    """The parameters' dtype for a ``dtype=`` argument: ``dtype`` itself, or JAX's default floating type for ``None``
    (float32, float64 with ``jax_enable_x64``).

    Raises:
        ValueError: naming the fix, for a type that is not floating (an integer or complex type) and for float64 while
            JAX's 64-bit mode is off (JAX would store float32 values without a word).
    """
    if dtype is None:
        return jnp.dtype(jnp.result_type(float))
    try:
        d = jnp.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be a floating dtype such as jnp.float32 or jnp.float64, got {dtype!r}") from None
    if not jnp.issubdtype(d, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype such as jnp.float32 or jnp.float64, got {d.name}: flow "
                         "parameters are real numbers")
    if jax.dtypes.canonicalize_dtype(d) != d:
        raise ValueError(f"dtype={d.name} needs JAX's 64-bit mode, which is off: call "
                         "jax.config.update('jax_enable_x64', True) at startup (or build inside jax.enable_x64()), or "
                         "choose dtype=jnp.float32")
    return d


def buffer_dtype(dtype: Any) -> np.dtype:
    """The dtype of the integer-valued buffers of a flow in ``dtype``: ``dtype``, but at least float32 (float16 and
    bfloat16 hold integers exactly only up to 2048 and 256, too few for a permutation's indices)."""
    return jnp.promote_types(dtype, jnp.float32)


def uniform(key: Array, shape: tuple[int, ...], dtype: Any, minval: float, maxval: float) -> Array:
    """``U(minval, maxval)`` draws made in float32 (:data:`DRAW_DTYPE`) and cast to ``dtype``: one key gives the same
    initial values in every dtype."""
    return jax.random.uniform(key, shape, DRAW_DTYPE, minval, maxval).astype(dtype)


def normal(key: Array, shape: tuple[int, ...], dtype: Any) -> Array:
    """Standard normal draws made in float32 (:data:`DRAW_DTYPE`) and cast to ``dtype`` (see :func:`uniform`)."""
    return jax.random.normal(key, shape, DRAW_DTYPE).astype(dtype)


def is_buffer(name: str) -> bool:
    """Whether the parameter ``name`` (dotted, e.g. ``"transforms.0.perm"``) is an integer-valued buffer."""
    return name.rsplit(".", 1)[-1] in BUFFERS


def cast_params(params: dict[str, Array], dtype: Any) -> dict[str, Array]:
    """``params`` with every floating array cast to ``dtype`` and the buffers to :func:`buffer_dtype` (their integer
    values unchanged); non-floating arrays as they are."""
    dtype = float_dtype(dtype)
    out = {}
    for k, v in params.items():
        v = jnp.asarray(v)
        if jnp.issubdtype(v.dtype, jnp.floating):
            v = v.astype(buffer_dtype(dtype) if is_buffer(k) else dtype)
        out[k] = v
    return out

