"""``Flow``: a standard normal pushed through a stack of transforms, and the NumPyro distribution it returns.

A flow is a JAX pytree whose leaves are its parameters, so it passes through ``jax.jit``, ``jax.grad`` and optax
updates as it is; ``flow.params`` is a flat dict keyed ``"transforms.{i}.<name>"`` (``"transforms.0.made.flat"``,
...), ``flow.with_params(p)`` returns the same flow with other values, and :func:`numpyroflows.module` registers the
parameters with NumPyro (``numpyro.param``). ``flow(context)`` is a :class:`FlowDistribution`, a NumPyro
``Distribution`` usable in any model or guide. The keys are those of pyroflows' ``state_dict``, so parameters move
between the packages by name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints

from .._checks import check_context, check_input
from .._dtype import cast_params
from ..transforms.base import (
    FlowChain,
    FlowTransform,
    chain_forward,
    chain_inverse,
    floating_input,
    record_init_arguments,
)
from .bases import TrainableBase

Array = jax.Array
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

#: name -> Flow subclass (the recipes), for rebuilding saved flows.
RECIPES: dict[str, type] = {}


@jax.tree_util.register_pytree_node_class
class Flow:
    """A normalizing flow ``x = T(z)``, ``z ~ base`` (standard normal by default); calling it returns a NumPyro
    distribution.

    Args:
        transforms: the transforms of ``T`` (:class:`~numpyroflows.transforms.FlowTransform` instances), applied first
            to last from base to data; they share one ``input_dim`` and (those that take one) one ``context_dim``.
        base: any NumPyro distribution with ``event_shape == (input_dim,)``; ``None`` for the standard normal; or a
            trainable base (:class:`~numpyroflows.flows.TrainableBase`, e.g.
            :class:`~numpyroflows.flows.DiagonalNormal`), whose parameters join the flow's under ``base.`` (trained
            by ``fit``, registered by ``module``) and which is saved with the flow. A flow with another custom base
            cannot be saved by :func:`numpyroflows.save`.

    Example:
        >>> flow = NSF(input_dim=2, key=jax.random.PRNGKey(0))
        >>> d = flow()                                  # with context_dim > 0: flow(context)
        >>> x = d.sample(jax.random.PRNGKey(1), (100,)); lp = d.log_prob(x)
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        RECIPES[cls.__name__] = cls
        record_init_arguments(cls)
        jax.tree_util.register_pytree_node_class(cls)

    def __init__(self, transforms: Sequence[FlowTransform], base: dist.Distribution | None = None) -> None:
        transforms = tuple(transforms)
        if not transforms:
            raise ValueError("a Flow needs at least one transform")
        for t in transforms:
            if not isinstance(t, FlowTransform):
                raise TypeError(
                    f"Flow takes numpyroflows transforms (FlowTransform subclasses), got {type(t).__name__}")
        dims = {t.input_dim for t in transforms}
        if len(dims) != 1:
            raise ValueError(f"all transforms must share one input_dim, got {sorted(dims)}")
        ctx = {t.context_dim for t in transforms if t.context_dim}
        if len(ctx) > 1:
            raise ValueError(f"all conditional transforms must share one context_dim, got {sorted(ctx)}")
        self.transforms = transforms
        self.input_dim = dims.pop()
        self.context_dim = ctx.pop() if ctx else 0
        if base is not None and tuple(base.event_shape) != (self.input_dim,):
            raise ValueError(f"base must have event_shape ({self.input_dim},), got {tuple(base.event_shape)}")
        self.base = base

    # -------------------------------------------------------------------------------------------------------------
    def __call__(self, context: Array | None = None) -> FlowDistribution:
        """The flow's distribution (conditioned on ``context`` of shape ``(..., context_dim)`` if it takes one)."""
        context = _as_array(context, "context", f"{type(self).__name__}: ")
        check_context(context, self.context_dim, f"{type(self).__name__}: ")
        return FlowDistribution(self, context)

    def transform(self, context: Array | None = None) -> FlowChain:
        """The bijection ``T`` (base to data) as a NumPyro ``Transform``; ``T.inv`` is exact on fresh data."""
        return FlowChain(self.transforms, self.input_dim, self.context_dim, context)

    @property
    def params(self) -> dict[str, Array]:
        """All parameters, a flat dict keyed ``"transforms.{i}.<name>"`` and, with a trainable base, ``"base.<name>"``
        (the keys of pyroflows' ``state_dict``)."""
        out = {f"transforms.{i}.{k}": v for i, t in enumerate(self.transforms) for k, v in t.params.items()}
        if isinstance(self.base, TrainableBase):
            out.update({f"base.{k}": v for k, v in self.base.params.items()})
        return out

    def with_params(self, params: dict[str, Array]) -> Flow:
        """The same flow with other parameter values (names as in :attr:`params`)."""
        expected = set(self.params)
        missing, unexpected = sorted(expected - set(params)), sorted(set(params) - expected)
        if missing or unexpected:
            raise ValueError(f"parameter names do not match this flow: missing {missing}, unexpected {unexpected}")
        parts = [t.with_params({k: params[f"transforms.{i}.{k}"] for k in t.params})
                 for i, t in enumerate(self.transforms)]
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.transforms = tuple(parts)
        if isinstance(self.base, TrainableBase):
            new.base = self.base.with_params({k: params[f"base.{k}"] for k in self.base.params})
        return new

    def astype(self, dtype: Any) -> Flow:
        """The same flow with every floating parameter cast to ``dtype`` (the integer-valued buffers to ``dtype`` but
        at least float32, their values unchanged), as torch's ``flow.to(dtype)``; see "Precision" in
        :mod:`numpyroflows.transforms.base`. A base distribution that is not trainable is left as it is. Pure
        (jit-able); float64 needs ``jax_enable_x64``.

        Example:
            >>> flow64 = flows.NSF(2, key=jax.random.PRNGKey(0)).astype(jnp.float64)   # under jax_enable_x64
        """
        return self.with_params(cast_params(self.params, dtype))

    @property
    def requires_initialization(self) -> bool:
        """Whether a transform still waits for its data-dependent initialisation (an ActNorm whose flag is 0): then
        use :meth:`initialize` (``numpyroflows.fit`` does). Reads concrete flags: call it outside ``jax.jit``."""
        return any(t.requires_initialization for t in self.transforms)

    def initialize(self, x: Array, context: Array | None = None) -> Flow:
        """This flow with every transform's data-dependent initialisation (ActNorm's today) run on data ``x`` of
        shape ``(..., input_dim)``, as pyroflows' first ``flow(context).log_prob(x)`` does it: ``x`` goes through the
        inverse pass, last transform first, and each transform is initialised on the batch it receives
        (:meth:`~numpyroflows.transforms.FlowTransform.initialize` with ``direction="inverse"``), then applied; the
        pass stops below the last transform that has an initialisation. Transforms already initialised keep their
        values. Pure and jit-able: returns a new flow.

        Example:
            >>> flow = flow.initialize(jnp.asarray(x_train[:4096]))

        Reference: Kingma & Dhariwal (2018), "Glow" (ActNorm's data-dependent initialisation).
        """
        where = f"{type(self).__name__}.initialize: "
        x, context = _as_array(x, "x", where), _as_array(context, "context", where)
        check_input(x, self.input_dim, "x", where)
        check_context(context, self.context_dim, where)
        parts = list(self.transforms)
        # static (jit-able): the transforms that have an initialisation, whatever their flags say
        first = next((i for i, t in enumerate(parts) if type(t).initialize is not FlowTransform.initialize), len(parts))
        v = floating_input(x, parts)
        for i in reversed(range(first, len(parts))):
            t = parts[i] = parts[i].initialize(v, "inverse")
            v, _ = t._inverse_ld(t.params, v, context if t.context_dim else None)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.transforms = tuple(parts)
        return new

    def config(self) -> dict:
        """JSON-able configuration from which :func:`numpyroflows.load` rebuilds the flow."""
        base = _base_config(self.base)
        if "_flow_config" in self.__dict__:
            config = json.loads(self.__dict__["_flow_config"])
        else:
            config = {"type": "Flow", "transforms": [t.config() for t in self.transforms]}
        return config if base is None else {**config, "base": base}

    # pytree: the transforms and the base are the children, the rest is static
    def tree_flatten(self):
        static = tuple(sorted((k, v) for k, v in self.__dict__.items() if k not in ("transforms", "base")))
        return (self.transforms, self.base), static

    @classmethod
    def tree_unflatten(cls, static, children):
        new = object.__new__(cls)
        new.__dict__.update(dict(static))
        new.transforms, new.base = children
        return new

    def __repr__(self) -> str:
        return f"{type(self).__name__}(input_dim={self.input_dim}, context_dim={self.context_dim}, " \
               f"transforms={len(self.transforms)})"


def _base_config(base: Any) -> dict | None:
    """The saved configuration of a flow's base (``None`` for the standard normal); a ``ValueError`` naming the fix
    for a base that cannot be saved."""
    if base is None:
        return None
    if isinstance(base, TrainableBase):
        return base.config()
    raise ValueError(
        f"a flow with a custom base distribution ({type(base).__name__}) cannot be saved: only the standard normal "
        "and trainable bases (numpyroflows.flows.TrainableBase subclasses, e.g. DiagonalNormal(input_dim, loc, "
        "scale)) are saved with their flow. Use one of those (a DiagonalNormal whose parameters you set, or your own "
        "TrainableBase subclass), or save the transforms and rebuild the flow around your base after loading")


def base_log_prob(flow: Flow, z: Array) -> Array:
    """Log-density of ``flow``'s base at ``z`` ``(..., input_dim)``: ``flow.base`` when set, else the standard normal,
    summed over the last axis; shape ``(...)``."""
    if flow.base is not None:
        return flow.base.log_prob(z)
    return -0.5 * jnp.sum(z * z, -1) - flow.input_dim * _HALF_LOG_2PI


def _as_array(x: Any, name: str, where: str) -> Any:
    """``x`` as an array: JAX and NumPy arrays and tracers as they are, lists and other array-likes converted with
    NumPy; a ``TypeError`` naming ``.numpy()`` for a torch tensor (JAX does not read torch memory)."""
    if x is None or isinstance(x, (jax.Array, np.ndarray, jax.core.Tracer)):
        return x
    if type(x).__module__.split(".")[0] == "torch":
        raise TypeError(f"{where}{name} is a torch tensor; numpyroflows computes with JAX arrays: pass "
                        f"{name}.detach().cpu().numpy() (or build the flow with pyroflows)")
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{where}{name} must be an array of numbers, got {type(x).__name__} ({err})") from None
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{where}{name} must be an array of numbers, got {type(x).__name__} of dtype {arr.dtype}")
    return jnp.asarray(arr)


class FlowDistribution(dist.Distribution):
    """The distribution of a :class:`Flow` (optionally conditioned on a context), a NumPyro ``Distribution``.

    ``batch_shape`` is the context's batch shape (or ``()``), ``event_shape`` is ``(input_dim,)``. ``sample`` is
    reparameterized (the forward pass), ``log_prob`` runs the inverse pass, ``sample_and_log_prob`` draws and scores in
    one forward pass.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    reparametrized_params: list = []

    def __init__(self, flow: Flow, context: Array | None = None, *, validate_args: bool | None = None) -> None:
        self.flow = flow
        self.context = context
        batch = jnp.shape(context)[:-1] if context is not None else ()
        super().__init__(batch_shape=batch, event_shape=(flow.input_dim,), validate_args=False)

    def _base_sample(self, key: Array, sample_shape: tuple) -> Array:
        shape = tuple(sample_shape) + self.batch_shape
        if self.flow.base is not None:
            return self.flow.base.sample(key, shape)
        return jax.random.normal(key, shape + self.event_shape)

    def _base_log_prob(self, z: Array) -> Array:
        return base_log_prob(self.flow, z)

    def sample_and_log_prob(self, key: Array, sample_shape: tuple = ()) -> tuple[Array, Array]:
        """Reparameterized samples and their log-density in one forward pass."""
        z = self._base_sample(key, sample_shape)
        x, ladj = chain_forward(self.flow.transforms, z, self.context)
        return x, self._base_log_prob(z) - ladj

    def sample(self, key: Array, sample_shape: tuple = ()) -> Array:
        z = self._base_sample(key, sample_shape)
        return chain_forward(self.flow.transforms, z, self.context)[0]

    def sample_with_intermediates(self, key: Array, sample_shape: tuple = ()) -> tuple[Array, list]:
        """Samples and, as NumPyro's intermediates, their log-density from the same forward pass: inside a guide,
        NumPyro's ELBO then scores the draw without the inverse pass (one pass per step for an IAF, no numerical
        solve for planar/radial/Sylvester/BNAF)."""
        x, log_q = self.sample_and_log_prob(key, sample_shape)
        return x, [log_q]

    def log_prob(self, value: Array, intermediates: list | None = None) -> Array:
        """Log-density of ``value`` by the exact inverse pass, or the one carried in ``intermediates`` (from
        :meth:`sample_with_intermediates` for this very ``value``, as NumPyro passes it)."""
        if intermediates:
            return intermediates[0]
        where = f"{type(self.flow).__name__}.log_prob: "
        value = _as_array(value, "value", where)
        check_input(value, self.flow.input_dim, "value", where)
        z, ladj = chain_inverse(self.flow.transforms, value, self.context)
        lp = self._base_log_prob(z) + ladj
        return jnp.broadcast_to(lp, jnp.broadcast_shapes(lp.shape, self.batch_shape))

    def tree_flatten(self):
        return (self.flow, self.context), None

    @classmethod
    def tree_unflatten(cls, aux_data, params):
        return cls(*params)
