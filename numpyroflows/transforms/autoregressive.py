"""Autoregressive flows with any transformer, conditioned by MADE, in both orientations (JAX).

Mirrors :mod:`pyroflows.transforms.autoregressive`: ``orientation="maf"`` computes the parameters from the data side
and evaluates the transformer data to noise (density in one pass, sampling in ``D``), ``"iaf"`` from the noise side,
evaluating it noise to data (sampling in one pass). The slow direction
determines one dimension per pass in autoregressive order, computing only that dimension's rows of MADE's output
layer. The loop over the static ``D`` unrolls under ``jit``, except for large batches on an accelerator, where it is
a ``lax.scan`` (:data:`SCAN_MIN_BATCH`): on an H100 (8 dimensions, 5 layers, MADE (64, 64)) the scan took 0.60-0.69
of the unrolled loop's time at 2^18-2^20 points (it was 1.5x FlowJAX's, whose loop is a scan) and 0.85 at 2^16,
while the unrolled loop stays faster for small batches there (1.2-1.4x at 2^10 for affine layers) and for splines on
the CPU (the scan took 1.2-1.5x as long at 2^14-2^18 on 2 CPU cores).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ..nn.made import _layers, _made_output_rows, made_hidden, made_init, made_output, made_sequence
from ..nn.mlp import OUTPUT_INIT
from .base import FlowTransform, default_key
from .transformers import Transformer, make_transformer

Array = jax.Array

#: Batch size (number of points) from which the slow direction's loop over the dimensions is a ``lax.scan`` rather
#: than unrolled, on a non-CPU default backend; see the module docstring for the measurements.
SCAN_MIN_BATCH = 2**15


def _scan_the_dimensions(batch_shape: tuple[int, ...]) -> bool:
    """Whether the slow direction loops over the dimensions with ``lax.scan`` (decided at trace time)."""
    return math.prod(int(k) for k in batch_shape) >= SCAN_MIN_BATCH and jax.default_backend() != "cpu"


class AutoregressiveTransform(FlowTransform):
    """An autoregressive bijection with a MADE conditioner: ``y_i = τ(x_i; θ_i(x_{<i}, context))`` (IAF) or
    ``x_i = τ(y_i; θ_i(y_{<i}, context))`` (MAF).

    Same arguments as :class:`pyroflows.transforms.AutoregressiveTransform`, plus ``key`` (a PRNG key for the
    initial parameters). Parameters: ``"made.flat"`` (and ``"made.context_layer.weight"`` with a context).
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
                         self.order, output_bias=self.transformer.identity_params(), output_init=output_init)
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
                 output_init: float | str = OUTPUT_INIT, *, key: Array | None = None):
        super().__init__(input_dim, transformer, context_dim, hidden_dims, "maf", order, activation, count_bins,
                         bound, output_init, key=key)


class InverseAutoregressiveTransform(AutoregressiveTransform):
    """:class:`AutoregressiveTransform` with ``orientation="iaf"`` (sampling-fast)."""

    def __init__(self, input_dim: int, transformer: str | Transformer = "affine", context_dim: int = 0,
                 hidden_dims: Sequence[int] = (64, 64), order: str | Sequence[int] = "ascending",
                 activation: str = "relu", count_bins: int = 8, bound: float = 5.0,
                 output_init: float | str = OUTPUT_INIT, *, key: Array | None = None):
        super().__init__(input_dim, transformer, context_dim, hidden_dims, "iaf", order, activation, count_bins,
                         bound, output_init, key=key)
