"""The base class of every numpyroflows bijection: a NumPyro ``Transform`` that is a JAX pytree of its parameters.

Conventions:

* A transform maps base-side ``x`` to data-side ``y = T(x)`` on vectors of size ``input_dim`` (``event_dim = 1``).
* ``forward_and_log_det(x, context)`` returns ``(y, log|det ∂y/∂x|)`` and ``inverse_and_log_det(y, context)`` returns
  ``(x, log|det ∂x/∂y|)`` (the log-determinant *of the inverse*). Both are exact for fresh inputs; nothing is cached.
* Parameters live in ``params``, a flat dict of arrays keyed by dotted names (``"made.flat"``, ``"head.loc"``, ...).
  Everything else is static configuration: a transform is a pytree whose leaves are exactly its parameters, and
  passes through ``jax.jit``/``vmap``/``grad``; :meth:`FlowTransform.with_params` gives a copy with other values.
* ``T.condition(context)`` binds a context (a plain NumPyro ``Transform``, also a pytree), usable wherever NumPyro
  takes a ``Transform``.
* Precision (the ``dtype=`` keyword of every transform and recipe): parameters are stored in ``dtype``, by default
  JAX's default floating type, float32, or float64 when ``jax_enable_x64`` is on (as ``jnp.zeros`` does); float64
  with x64 off is refused, naming the fix. Random initial values are drawn in float32 whatever the dtype, so one
  ``key`` gives the same flow in every dtype; constant starts (the transformers' identity parameters,
  ``DiagonalAffine``'s ``loc``/``scale``, ``LeakyReLU``'s slope, ...) are computed in float64 and rounded once to
  ``dtype``, so a float64 flow starts exactly where asked. The integer-valued buffers (permutations, ActNorm's flag)
  are stored in ``dtype`` but at least float32, which holds their values exactly. ``T.astype(dtype)`` and
  ``Flow.astype(dtype)`` cast an existing transform or flow by the same rule (torch's ``.to(dtype)``); a transform
  computes in the promotion of its input's and its parameters' types. ``dtype`` is not configuration: saved files
  keep each array's type, and ``from_config`` builds in the default type.

These conventions and the parameter names are those of pyroflows (its ``state_dict`` keys), so parameters move between
the packages name for name.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform

from .._checks import check_context, check_input
from .._dtype import cast_params, is_buffer

Array = jax.Array

#: name -> class of every transform, for rebuilding flows from their saved configuration.
TRANSFORMS: dict[str, type] = {}


def _jsonable(value: Any) -> Any:
    if isinstance(value, FlowTransform):  # a wrapped transform (Invert's): its own configuration
        return value.config()
    if hasattr(value, "spec"):
        return {"__transformer__": value.spec()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _freeze(value: Any) -> Any:
    """Hashable form of static configuration (lists -> tuples), so pytree structures compare and hash."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def record_init_arguments(cls: type) -> None:
    """Wrap ``cls.__init__`` so that an instance remembers (as JSON) the arguments it was built with.

    The outermost constructor call stores ``{"type": class name, "kwargs": JSON-able arguments}`` as ``_flow_config``
    (straight into ``__dict__``); calls to ``super().__init__`` leave it alone. The PRNG ``key`` and the ``dtype`` are
    not configuration and are left out. Transforms and flows use it to be saved without pickling code
    (:meth:`FlowTransform.config`, :func:`from_config`)."""
    init = cls.__dict__.get("__init__")
    if init is None:
        return
    sig = inspect.signature(init)

    @functools.wraps(init)
    def recording_init(self, *args: Any, **kw: Any) -> None:
        if "_flow_config" not in self.__dict__:
            bound = sig.bind(self, *args, **kw)
            bound.apply_defaults()
            cfg = {k: _jsonable(v) for k, v in list(bound.arguments.items())[1:] if k not in ("key", "dtype")}
            self.__dict__["_flow_config"] = json.dumps({"type": type(self).__name__, "kwargs": cfg})
        init(self, *args, **kw)

    cls.__init__ = recording_init


def default_key(key: Array | None) -> Array:
    """The PRNG key to initialise parameters with (``PRNGKey(0)`` when none is given, for reproducibility)."""
    return jax.random.PRNGKey(0) if key is None else key


class _FusedTransform(Transform):
    """NumPyro's ``Transform`` protocol on top of ``forward_and_log_det``/``inverse_and_log_det``."""

    @property
    def domain(self):
        return constraints.real_vector

    @property
    def codomain(self):
        return constraints.real_vector

    def __call__(self, x: Array) -> Array:
        return self.forward_and_log_det(x)[0]

    def _inverse(self, y: Array) -> Array:
        return self.inverse_and_log_det(y)[0]

    def log_abs_det_jacobian(self, x: Array, y: Array, intermediates: Any = None) -> Array:
        return self.forward_and_log_det(x)[1]


class FlowTransform(_FusedTransform):
    """A bijection ``y = T(x)`` on ``R^input_dim`` with parameters ``params`` and an optional context.

    Subclasses set ``self.params`` and implement ``_forward_ld(params, x, context)`` and
    ``_inverse_ld(params, y, context)`` (pure functions of the parameter dict), each returning the output and the
    log-determinant of the map it computes, summed over the last axis.
    """

    #: constructor arguments that take another transform (saved as its configuration, revived by from_config)
    transform_args: tuple[str, ...] = ()
    #: names in ``params`` that the map holds fixed (behind ``lax.stop_gradient``: their gradients are zero)
    fixed_params: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)  # NumPyro registers the class as a pytree
        TRANSFORMS[cls.__name__] = cls
        record_init_arguments(cls)

    def __init__(self, input_dim: int, context_dim: int = 0) -> None:
        if int(input_dim) < 1:
            raise ValueError(f"input_dim must be a positive integer, got {input_dim}")
        if int(context_dim) < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        self.input_dim = int(input_dim)
        self.context_dim = int(context_dim)
        self.params: dict[str, Array] = {}

    # ----------------------------------------------------------------- to implement
    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        raise NotImplementedError

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        raise NotImplementedError

    # ----------------------------------------------------------------- data-dependent initialisation
    @property
    def requires_initialization(self) -> bool:
        """Whether the transform still waits for its data-dependent initialisation (:meth:`initialize`); always
        False for transforms without one. Reads a concrete flag: call it outside ``jax.jit``."""
        return False

    def initialize(self, v: Array, direction: str = "forward") -> FlowTransform:
        """This transform initialised from a batch: ``v`` is an input ``x`` (``direction="forward"``) or an output
        ``y`` (``"inverse"``). Nothing to do here (:class:`~numpyroflows.transforms.ActNorm` overrides it): returns
        the transform itself. Pure and jit-able; :meth:`numpyroflows.flows.Flow.initialize` calls it for every
        transform of a flow."""
        if direction not in ("forward", "inverse"):
            raise ValueError(f"direction must be 'forward' or 'inverse', got {direction!r}")
        return self

    # ----------------------------------------------------------------- public API
    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        """``(T(x), log|det ∂T/∂x|)`` in one pass."""
        name = type(self).__name__
        check_input(x, self.input_dim, "x", f"{name}: ")
        check_context(context, self.context_dim, f"{name}: ")
        return self._forward_ld(self.params, floating_input(x, (self,)), context)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        """``(T⁻¹(y), log|det ∂T⁻¹/∂y|)`` in one pass; exact for any ``y``."""
        name = type(self).__name__
        check_input(y, self.input_dim, "y", f"{name}: ")
        check_context(context, self.context_dim, f"{name}: ")
        return self._inverse_ld(self.params, floating_input(y, (self,)), context)

    def condition(self, context: Array) -> ConditionedTransform:
        """This transform with its context fixed: a plain NumPyro ``Transform``."""
        check_context(context, self.context_dim, f"{type(self).__name__}.condition: ")
        return ConditionedTransform(self, context)

    def with_params(self, params: dict[str, Array]) -> FlowTransform:
        """A copy of this transform with other parameter values (same names and shapes)."""
        missing, unexpected = set(self.params) - set(params), set(params) - set(self.params)
        if missing or unexpected:
            raise ValueError(f"parameter names do not match {type(self).__name__}: missing {sorted(missing)}, "
                             f"unexpected {sorted(unexpected)}")
        new = object.__new__(type(self))
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k != "_inv"})  # not NumPyro's cached `.inv`
        new.params = {k: jnp.asarray(params[k]) for k in self.params}
        return new

    def astype(self, dtype: Any) -> FlowTransform:
        """A copy with every floating parameter cast to ``dtype`` (the integer-valued buffers to ``dtype`` but at least
        float32, their values unchanged), as torch's ``module.to(dtype)``; see "Precision" in
        :mod:`numpyroflows.transforms.base`. Pure (jit-able); float64 needs ``jax_enable_x64``.

        Example:
            >>> t64 = LULinear(3, key=jax.random.PRNGKey(0)).astype(jnp.float64)   # under jax_enable_x64
        """
        return self.with_params(cast_params(self.params, dtype))

    def config(self) -> dict:
        """JSON-able description from which :func:`numpyroflows.transforms.from_config` rebuilds this transform."""
        return json.loads(self.__dict__["_flow_config"])

    # ----------------------------------------------------------------- pytree protocol
    def tree_flatten(self):
        keys = tuple(sorted(self.params))
        static = tuple(sorted((k, _freeze(v)) for k, v in self.__dict__.items() if k not in ("params", "_inv")))
        return tuple(self.params[k] for k in keys), (keys, static)

    @classmethod
    def tree_unflatten(cls, aux_data, leaves):
        keys, static = aux_data
        new = object.__new__(cls)
        new.__dict__.update(dict(static))
        new.params = dict(zip(keys, leaves))
        return new

    def __repr__(self) -> str:
        return f"{type(self).__name__}(input_dim={self.input_dim}, context_dim={self.context_dim})"


class ConditionedTransform(_FusedTransform):
    """A :class:`FlowTransform` with a fixed context, as a plain NumPyro ``Transform`` (a pytree)."""

    def __init__(self, base: FlowTransform, context: Array | None) -> None:
        self.base = base
        self.context = context

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        return self.base.forward_and_log_det(x, self.context)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        return self.base.inverse_and_log_det(y, self.context)

    def tree_flatten(self):
        return (self.base, self.context), None

    @classmethod
    def tree_unflatten(cls, aux_data, leaves):
        return cls(*leaves)


class FlowChain(_FusedTransform):
    """A sequence of flow transforms with one context, applied left to right (what ``Flow.transform`` returns)."""

    def __init__(self, parts: tuple[FlowTransform, ...], input_dim: int, context_dim: int,
                 context: Array | None) -> None:
        check_context(context, context_dim, "Flow.transform: ")
        self.parts, self.input_dim, self.context_dim, self.context = tuple(parts), input_dim, context_dim, context

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        check_input(x, self.input_dim, "x", "Flow.transform: ")
        return chain_forward(self.parts, x, self.context)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        check_input(y, self.input_dim, "y", "Flow.transform: ")
        return chain_inverse(self.parts, y, self.context)

    def tree_flatten(self):
        return (self.parts, self.context), (self.input_dim, self.context_dim)

    @classmethod
    def tree_unflatten(cls, aux_data, leaves):
        new = object.__new__(cls)
        new.parts, new.context = leaves
        new.input_dim, new.context_dim = aux_data
        return new


def floating_input(x: Array, parts: Sequence[FlowTransform]) -> Array:
    """``x`` in the floating type the transforms compute in: the promotion of its dtype with their parameters'.

    Integer, bool and low-precision (bfloat16, float16) inputs are promoted (to float32, or float64 with x64 and
    float64 parameters), so that every pass, including an autoregressive flow's slow direction, which writes its
    outputs into an array shaped like its input, computes in the parameters' precision. The integer-valued buffers
    (stored in at least float32) count only where there are no other parameters.
    """
    x = jnp.asarray(x)
    floating = [(k, leaf.dtype) for t in parts for k, leaf in t.params.items()
                if jnp.issubdtype(leaf.dtype, jnp.floating)]
    dtypes = [d for k, d in floating if not is_buffer(k)] or [d for _, d in floating]
    target = jnp.result_type(*dtypes) if dtypes else jnp.result_type(float)
    dtype = jnp.promote_types(x.dtype, target)
    return x if x.dtype == dtype else x.astype(dtype)


def chain_forward(parts, x: Array, context: Array | None) -> tuple[Array, Array]:
    """Unchecked fused forward pass through ``parts``."""
    x = floating_input(x, parts)
    total = jnp.zeros(x.shape[:-1], x.dtype)
    for t in parts:
        x, ld = t._forward_ld(t.params, x, context if t.context_dim else None)
        total = total + ld
    return x, total


def chain_inverse(parts, y: Array, context: Array | None) -> tuple[Array, Array]:
    """Unchecked fused inverse pass through ``parts`` (last to first)."""
    y = floating_input(y, parts)
    total = jnp.zeros(y.shape[:-1], y.dtype)
    for t in reversed(parts):
        y, ld = t._inverse_ld(t.params, y, context if t.context_dim else None)
        total = total + ld
    return y, total


def from_config(config: dict, key: Array | None = None) -> FlowTransform:
    """Rebuild a transform (fresh parameters from ``key``) from :meth:`FlowTransform.config`."""
    from .transformers import revive_transformers

    try:
        cls = TRANSFORMS[config["type"]]
    except KeyError:
        raise ValueError(f"unknown transform type {config.get('type')!r} in saved configuration") from None
    return cls(**{k: from_config(v, key) if k in cls.transform_args else revive_transformers(v)
                  for k, v in config["kwargs"].items()}, key=key)
