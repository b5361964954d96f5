"""Autoregressive flows with any transformer, conditioned by MADE, in both orientations (JAX).

Each dimension is mapped by a transformer ``τ`` whose parameters ``θ_i`` are a function of the dimensions before
``i`` in the order (and of the context). With ``x`` the noise (base) side and ``y`` the data side:

* ``orientation="maf"`` (density-fast; Papamakarios et al. 2017, "Masked Autoregressive Flow"):
  ``x_i = τ(y_i; θ_i(y_{<i}))``, ``θ = MADE(y)`` from the data side. The inverse ``y -> x`` (density evaluation)
  takes one network pass and evaluates ``τ`` forward (for the affine transformer ``x = shift + scale·y``); the forward
  ``x -> y`` (sampling) takes ``D`` passes through ``τ⁻¹``.
* ``orientation="iaf"`` (sampling-fast; Kingma et al. 2016, "Improved Variational Inference with Inverse
  Autoregressive Flow"): ``y_i = τ(x_i; θ_i(x_{<i}))``, ``θ = MADE(x)`` from the noise side. Sampling (and the
  density of the flow's own samples) takes one pass through ``τ``; the density of fresh data takes ``D`` passes.

Both directions are exact. The slow direction determines one dimension per pass in autoregressive order, computing
only that dimension's rows of MADE's output layer. The loop over the static ``D``
unrolls under ``jit``, except for large batches on an accelerator, where it is a ``lax.scan``
(:data:`SCAN_MIN_BATCH`): there the scan is faster, while the unrolled loop stays faster for small batches and on the
CPU (``benchmarks/gpu.py`` measures both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ..nn.made import _layers, _made_output_rows, made_hidden, made_init, made_output, made_sequence
from ..nn.mlp import OUTPUT_INIT
from .base import FlowTransform, default_key
from .transformers import Transformer, make_transformer

Array = jax.Array

#: Batch size (number of points) from which the slow direction's loop over the dimensions is a ``lax.scan`` rather
#: than unrolled, on a non-CPU default backend (the crossover measured by ``benchmarks/gpu.py``).
SCAN_MIN_BATCH = 2**15


def _scan_the_dimensions(batch_shape: tuple[int, ...]) -> bool:
    """Whether the slow direction loops over the dimensions with ``lax.scan`` (decided at trace time)."""
    return math.prod(int(k) for k in batch_shape) >= SCAN_MIN_BATCH and jax.default_backend() != "cpu"


class AutoregressiveTransform(FlowTransform):
    """An autoregressive bijection with a MADE conditioner: ``y_i = τ(x_i; θ_i(x_{<i}, context))`` (IAF) or
    ``x_i = τ(y_i; θ_i(y_{<i}, context))`` (MAF).

    Args:
        input_dim: D.
        transformer: ``"affine"``, ``"additive"``, ``"spline"``, ``"bspline"``, ``"mixture"`` or an instance.
        context_dim: size of the context (0: none).
        hidden_dims: MADE hidden widths (at least one layer).
        orientation: ``"maf"`` (density-fast) or ``"iaf"`` (sampling-fast).
        order: ``"ascending"``, ``"descending"`` or a permutation listing the dimensions first to last.
        activation: MADE hidden nonlinearity.
        count_bins, bound: spline options, passed to the transformer when it takes them.
        output_init: half-width of the uniform start of MADE's output weights (its bias starts at the transformer's
            identity), or ``"fan_in"`` for ``±1/sqrt(hidden_dims[-1])``. The default ``1e-3`` starts the layer
            within about ``1e-3`` of the identity, which a guide or an encoder needs; ``"fan_in"`` (zuko's and
            FlowJAX's start) can help affine MAFs fitted by maximum likelihood and hurt spline ones (see
            :func:`~numpyroflows.nn.mlp.output_init_bound`).
        key: PRNG key of the initial parameters (``PRNGKey(0)`` if None).
        dtype: floating type of the parameters (``None``: JAX's default; see "Precision" in
            :mod:`numpyroflows.transforms.base`).

    Parameters: ``"made.flat"`` (and ``"made.context_layer.weight"`` with a context), laid out as in
    :mod:`numpyroflows.nn.made`. Arguments and parameter names are those of
    ``pyroflows.transforms.AutoregressiveTransform`` (plus ``key``), so parameters move between the packages by name.

    Example:
        >>> t = AutoregressiveTransform(4, "spline", orientation="maf", key=jax.random.PRNGKey(0))
        >>> x, ladj = t.inverse_and_log_det(jnp.zeros((100, 4)))   # one pass
    """

    def __init__(
        self,
        input_dim: int,
        transformer: str | Transformer = "affine",
        context_dim: int = 0,
        hidden_dims: Sequence[int] = (64, 64),
        orientation: str = "maf",
        order: str | Sequence[int] = "ascending",
        activation: str = "relu",
        count_bins: int = 8,
        bound: float = 5.0,
        output_init: float | str = OUTPUT_INIT,
        *,
        key: Array | None = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(input_dim, context_dim)
        if orientation not in ("maf", "iaf"):
            raise ValueError(f"orientation must be 'maf' (density-fast) or 'iaf' (sampling-fast), got {orientation!r}")
        self.orientation = orientation
        self.transformer = make_transformer(transformer, count_bins=count_bins, bound=bound)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        if not self.hidden_dims:
            raise ValueError("MADE needs at least one hidden layer (hidden_dims=(64, 64) is a good default)")
        self.order = order if isinstance(order, str) else tuple(int(i) for i in order)
        self.activation = activation
        made = made_init(default_key(key), input_dim, self.transformer.num_params, self.hidden_dims, context_dim,
                         self.order, output_bias=self.transformer.identity_params(), dtype=dtype,
                         output_init=output_init)
        self.params = {f"made.{k}": v for k, v in made.items()}

    def _made(self, params: dict) -> dict:
        return {k[len("made."):]: v for k, v in params.items() if k.startswith("made.")}

    def _kw(self) -> dict:
        return {"input_dim": self.input_dim, "num_params": self.transformer.num_params}

    def _one_pass(self, params: dict, known: Array, context: Array | None):
        made = self._made(params)
        layers = _layers(made, self.input_dim, self.transformer.num_params, self.hidden_dims, self.order)
        h = made_hidden(made, known, context, hidden_dims=self.hidden_dims, order=self.order,
                        activation=self.activation, layers=layers, **self._kw())
        if not self.transformer._params_first:
            out, ld = self.transformer.forward(known, made_output(layers, h, **self._kw()))
            return out, ld.sum(-1)
        # parameters first, (P, D, *batch), and the values moved to (D, *batch) to match (see made_output)
        theta = made_output(layers, h, params_first=True, **self._kw())
        known = jnp.moveaxis(jnp.broadcast_to(known, h.shape[:-1] + known.shape[-1:]), -1, 0)
        out, ld = self.transformer._forward_first(known, theta)
        return jnp.moveaxis(out, 0, -1), ld.sum(0)

    def _sequential(self, params: dict, given: Array, context: Array | None):
        made = self._made(params)
        d, p = self.input_dim, self.transformer.num_params
        layers = _layers(made, d, p, self.hidden_dims, self.order)
        batch = jnp.broadcast_shapes(given.shape[:-1], () if context is None else context.shape[:-1])
        given = jnp.broadcast_to(given, batch + given.shape[-1:])
        first = self.transformer._params_first
        w, b = layers[-1]

        def step(carry, xs):
            """Determine dimension ``dim`` from the ones before it; ``w_dim, b_dim``: its rows of the output layer
            (units ``p·D + dim``). ``dim`` is a Python int (unrolled) or a traced scalar (scan)."""
            out, total = carry
            dim, w_dim, b_dim = xs
            h = made_hidden(made, out, context, hidden_dims=self.hidden_dims, order=self.order,
                            activation=self.activation, layers=layers, **self._kw())
            theta = _made_output_rows(w_dim, b_dim, h, num_params=p, num_dims=1, params_first=first)
            if first:  # theta (P, 1, *batch)
                value, ld = self.transformer._inverse_first(given[..., dim][None], theta)
                value, ld = value[0], ld[0]
            else:  # theta (*batch, 1, P)
                value, ld = self.transformer.inverse(given[..., dim][..., None], theta)
                value, ld = value[..., 0], ld[..., 0]
            return (out.at[..., dim].set(value), total + ld), None

        carry = (jnp.zeros_like(given), jnp.zeros(batch, given.dtype))
        steps = [(dim, w[dim::d], b[dim::d]) for dim in made_sequence(d, self.order)]
        if _scan_the_dimensions(batch):
            dims, ws, bs = zip(*steps)
            carry, _ = jax.lax.scan(step, carry, (jnp.asarray(dims), jnp.stack(ws), jnp.stack(bs)))
        else:
            for xs in steps:
                carry, _ = step(carry, xs)
        return carry

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        if self.orientation == "iaf":
            return self._one_pass(params, x, context)
        return self._sequential(params, x, context)

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        if self.orientation == "maf":
            return self._one_pass(params, y, context)
        return self._sequential(params, y, context)


class MaskedAutoregressiveTransform(AutoregressiveTransform):
    """:class:`AutoregressiveTransform` with ``orientation="maf"`` (density-fast)."""

    def __init__(self, input_dim: int, transformer: str | Transformer = "affine", context_dim: int = 0,
                 hidden_dims: Sequence[int] = (64, 64), order: str | Sequence[int] = "ascending",
                 activation: str = "relu", count_bins: int = 8, bound: float = 5.0,
                 output_init: float | str = OUTPUT_INIT, *, key: Array | None = None, dtype: Any = None):
        super().__init__(input_dim, transformer, context_dim, hidden_dims, "maf", order, activation, count_bins,
                         bound, output_init, key=key, dtype=dtype)


class InverseAutoregressiveTransform(AutoregressiveTransform):
    """:class:`AutoregressiveTransform` with ``orientation="iaf"`` (sampling-fast)."""

    def __init__(self, input_dim: int, transformer: str | Transformer = "affine", context_dim: int = 0,
                 hidden_dims: Sequence[int] = (64, 64), order: str | Sequence[int] = "ascending",
                 activation: str = "relu", count_bins: int = 8, bound: float = 5.0,
                 output_init: float | str = OUTPUT_INIT, *, key: Array | None = None, dtype: Any = None):
        super().__init__(input_dim, transformer, context_dim, hidden_dims, "iaf", order, activation, count_bins,
                         bound, output_init, key=key, dtype=dtype)
