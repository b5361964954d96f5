"""Trainable base distributions: the ``base`` of a :class:`~numpyroflows.flows.Flow` whose parameters are the flow's.

A trainable base is a pytree of its parameters (a flat dict ``params``, like a transform's) with ``log_prob(z)`` and
``sample(key, sample_shape)``. Given as ``Flow(transforms, base=...)``, its parameters join the flow's under
``base.`` (``flow.params["base.loc"]``, ``"base.raw_scale"``: pyroflows' ``state_dict`` names), so ``with_params``,
:func:`numpyroflows.module` (NumPyro registration), :func:`numpyroflows.fit` and ``jax.grad`` of the flow reach them,
:func:`numpyroflows.save` stores the base with the flow, and ``export_params``/``import_params`` move it between the
packages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from flowcommon.starts import diagonal_start

from .._dtype import float_dtype
from ..functional.affine import MIN_SCALE, affine_scale
from ..transforms.base import _freeze, record_init_arguments

Array = jax.Array
_HALF_LOG_2PI = 0.5 * float(np.log(2 * np.pi))

#: name -> TrainableBase subclass, for rebuilding saved flows.
BASES: dict[str, type] = {}


class TrainableBase:
    """A base distribution with learnable parameters, savable with its flow: a pytree whose leaves are ``params``.

    Subclasses set ``self.params`` (a flat dict of arrays) and implement ``_log_prob(params, z)`` (the log-density
    of ``z`` of shape ``(..., input_dim)``, shape ``(...)``) and ``_sample(params, key, shape)`` (reparameterized
    draws of shape ``shape + (input_dim,)``) as pure functions of the parameters; ``distribution()`` may give the
    NumPyro distribution they describe. Subclasses are registered by name and remember their constructor arguments
    (JSON-able ones; the PRNG ``key`` and the ``dtype`` are not saved), so that :func:`numpyroflows.save` and
    :func:`numpyroflows.load` rebuild them; pyroflows' class of the same name takes the same arguments and parameter
    names.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        BASES[cls.__name__] = cls
        record_init_arguments(cls)
        jax.tree_util.register_pytree_node(cls, cls.tree_flatten, cls.tree_unflatten)

    def __init__(self, input_dim: int) -> None:
        if int(input_dim) < 1:
            raise ValueError(f"input_dim must be a positive integer, got {input_dim}")
        self.input_dim = int(input_dim)
        self.params: dict[str, Array] = {}

    # ----------------------------------------------------------------- to implement
    def _log_prob(self, params: dict, z: Array) -> Array:
        raise NotImplementedError

    def _sample(self, params: dict, key: Array, shape: tuple) -> Array:
        raise NotImplementedError

    def distribution(self) -> dist.Distribution:
        """The NumPyro distribution with the current parameters."""
        raise NotImplementedError

    # ----------------------------------------------------------------- the distribution API a Flow uses
    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.input_dim,)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return ()

    def log_prob(self, z: Array) -> Array:
        """``log p(z)`` for ``z`` of shape ``(..., input_dim)``; shape ``(...)``."""
        return self._log_prob(self.params, z)

    def sample(self, key: Array, sample_shape: Sequence[int] = ()) -> Array:
        """Reparameterized draws of shape ``sample_shape + (input_dim,)``."""
        return self._sample(self.params, key, tuple(sample_shape))

    def with_params(self, params: dict[str, Array]) -> TrainableBase:
        """A copy with other parameter values (same names)."""
        missing, unexpected = set(self.params) - set(params), set(params) - set(self.params)
        if missing or unexpected:
            raise ValueError(f"parameter names do not match {type(self).__name__}: missing {sorted(missing)}, "
                             f"unexpected {sorted(unexpected)}")
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.params = {k: jnp.asarray(params[k]) for k in self.params}
        return new

    def config(self) -> dict:
        """JSON-able description (``{"type": class name, "kwargs": constructor arguments}``) from which
        :func:`base_from_config` rebuilds this base."""
        return json.loads(self.__dict__["_flow_config"])

    # ----------------------------------------------------------------- pytree protocol
    def tree_flatten(self):
        keys = tuple(sorted(self.params))
        static = tuple(sorted((k, _freeze(v)) for k, v in self.__dict__.items() if k != "params"))
        return tuple(self.params[k] for k in keys), (keys, static)

    @classmethod
    def tree_unflatten(cls, aux_data, leaves):
        keys, static = aux_data
        new = object.__new__(cls)
        new.__dict__.update(dict(static))
        new.params = dict(zip(keys, leaves))
        return new

    def __repr__(self) -> str:
        return f"{type(self).__name__}(input_dim={self.input_dim})"


def base_from_config(config: dict, key: Array | None = None) -> TrainableBase:
    """Rebuild a trainable base (fresh parameters) from :meth:`TrainableBase.config`."""
    try:
        cls = BASES[config["type"]]
    except KeyError:
        raise ValueError(f"unknown base distribution type {config.get('type')!r} in saved configuration; known: "
                         f"{sorted(BASES)}") from None
    return cls(**config["kwargs"], key=key)


class DiagonalNormal(TrainableBase):
    """A normal base distribution with learned mean and per-dimension scale: ``z ~ N(loc, diag(scale²))``.

    ``scale = 1e-3 + softplus(raw_scale + c)`` (:func:`~numpyroflows.functional.affine.affine_scale`:
    ``raw_scale = 0`` gives 1, and the scale grows linearly, not exponentially, in its raw parameter); parameters
    ``loc`` and ``raw_scale`` (``flow.params`` keys ``base.loc``, ``base.raw_scale`` inside a flow, as in pyroflows).
    ``log N(z; loc, scale) = -Σ_i [(z_i - loc_i)² / (2 scale_i²) + log scale_i + log(2π)/2]``; draws are
    ``loc + scale ⊙ ε``, ``ε ~ N(0, I)`` (reparameterized). It starts as the standard normal by default, so a flow
    given this base starts where the same flow with the fixed standard normal does.

    Args:
        input_dim: D.
        loc: starting mean, a number or ``D`` numbers.
        scale: starting standard deviation, a number or ``D`` numbers, each above the floor ``1e-3``.
        key: unused (the start is deterministic); accepted like every constructor's ``key``.
        dtype: floating type of the parameters (``None``: JAX's default), as the transforms' ``dtype``; not saved
            (the stored arrays carry their type).

    Example:
        >>> flow = Flow([AutoregressiveTransform(2, "spline", key=jax.random.PRNGKey(0))], base=DiagonalNormal(2))
        >>> flow, history = numpyroflows.fit(flow, x)        # trains loc and raw_scale with the layers
        >>> numpyroflows.save(flow, "flow.npz")

    Reference: zuko's ``UnconditionalDistribution(DiagNormal, loc, scale)`` base (trainable unless
    ``buffer=True``), FlowJAX's ``Normal`` base distribution (trainable unless its parameters are marked
    non-trainable); Papamakarios et al. (2021), "Normalizing flows for probabilistic modeling and inference", §2.1
    (a base distribution with parameters of its own).
    """

    def __init__(self, input_dim: int, loc: float | Sequence[float] = 0.0, scale: float | Sequence[float] = 1.0, *,
                 key: Array | None = None, dtype: Any = None) -> None:
        super().__init__(input_dim)
        loc0, raw0 = diagonal_start(self.input_dim, loc, scale, "DiagonalNormal", MIN_SCALE)  # float64
        dtype = float_dtype(dtype)
        self.params = {"loc": jnp.asarray(loc0, dtype), "raw_scale": jnp.asarray(raw0, dtype)}

    def _log_prob(self, params: dict, z: Array) -> Array:
        scale = affine_scale(params["raw_scale"])
        u = (z - params["loc"]) / scale
        return jnp.sum(-0.5 * u * u - jnp.log(scale), -1) - self.input_dim * _HALF_LOG_2PI

    def _sample(self, params: dict, key: Array, shape: tuple) -> Array:
        eps = jax.random.normal(key, shape + (self.input_dim,), params["loc"].dtype)
        return params["loc"] + affine_scale(params["raw_scale"]) * eps

    def distribution(self) -> dist.Distribution:
        """``Normal(loc, scale).to_event(1)``."""
        return dist.Normal(self.params["loc"], affine_scale(self.params["raw_scale"])).to_event(1)
