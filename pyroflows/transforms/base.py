"""The base class of every pyroflows bijection, and conditioning on a context.

Conventions (the same in numpyroflows):

* A transform maps base-side ``x`` to data-side ``y = T(x)`` on vectors of size ``input_dim`` (``event_dim = 1``).
* ``forward_and_log_det(x, context)`` returns ``(y, log|det ∂y/∂x|)``; ``inverse_and_log_det(y, context)`` returns
  ``(x, log|det ∂x/∂y|)`` (the log-determinant *of the inverse*). Both are exact for fresh inputs; nothing is cached.
* A transform built with ``context_dim > 0`` is a Pyro ``ConditionalTransform``: ``T.condition(context)`` is a
  ``torch.distributions.Transform`` bound to that context, usable in Pyro's ``ConditionalTransformedDistribution``.
  Without a context it is itself a ``TransformModule`` usable in ``TransformedDistribution``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from pyro.distributions.conditional import ConditionalTransform
from pyro.distributions.torch_transform import TransformModule
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import Transform, constraints

from .._checks import check_context, check_input, in_dtype_of

Tensor = torch.Tensor

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
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def record_init_arguments(cls: type) -> None:
    """Wrap ``cls.__init__`` so that an instance remembers the arguments it was built with.

    The outermost constructor call stores ``{"type": class name, "kwargs": JSON-able arguments}`` as
    ``_flow_config`` (before ``nn.Module.__init__``, hence straight into ``__dict__``); calls to ``super().__init__``
    leave it alone. A ``dtype`` argument is not configuration (the saved tensors carry their type) and is left out.
    Used by transforms and flows for saving without pickling code.
    """
    init = cls.__dict__.get("__init__")
    if init is None:
        return
    sig = inspect.signature(init)

    @functools.wraps(init)
    def recording_init(self, *args: Any, **kw: Any) -> None:
        if "_flow_config" not in self.__dict__:
            bound = sig.bind(self, *args, **kw)
            bound.apply_defaults()
            cfg = {k: _jsonable(v) for k, v in list(bound.arguments.items())[1:] if k != "dtype"}
            self.__dict__["_flow_config"] = {"type": type(self).__name__, "kwargs": cfg}
        init(self, *args, **kw)

    cls.__init__ = recording_init


class _FusedTransform:
    """The ``torch.distributions.Transform`` protocol on top of ``forward_and_log_det``/``inverse_and_log_det``."""

    def _call(self, x: Tensor) -> Tensor:
        return self.forward_and_log_det(x)[0]

    def _inverse(self, y: Tensor) -> Tensor:
        return self.inverse_and_log_det(y)[0]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self.forward_and_log_det(x)[1]


class FlowTransform(_FusedTransform, TransformModule):
    """A bijection ``y = T(x)`` on ``R^input_dim`` with learnable parameters and an optional context.

    Subclasses implement ``_forward_ld(x, context)`` and ``_inverse_ld(y, context)``, each returning the output
    and the log-determinant of the map it computes, summed over the last axis. Public methods validate inputs.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    #: constructor arguments that take another transform (saved as its configuration, revived by from_config)
    transform_args: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not issubclass(cls, PyroModule):  # pyro.nn.module.to_pyro_module_ mixes PyroModule into a class copy
            TRANSFORMS[cls.__name__] = cls
        record_init_arguments(cls)

    def __init__(self, input_dim: int, context_dim: int = 0) -> None:
        super().__init__(cache_size=0)
        if int(input_dim) < 1:
            raise ValueError(f"input_dim must be a positive integer, got {input_dim}")
        if int(context_dim) < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        self.input_dim = int(input_dim)
        self.context_dim = int(context_dim)

    # ----------------------------------------------------------------- to implement
    def _forward_ld(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _inverse_ld(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    # ----------------------------------------------------------------- data-dependent initialisation
    @property
    def requires_initialization(self) -> bool:
        """Whether the transform still waits for its data-dependent initialisation (:meth:`initialize`); always
        False for transforms without one."""
        return False

    def initialize(self, v: Tensor, direction: str = "forward") -> FlowTransform:
        """Data-dependent initialisation from a batch: ``v`` is an input ``x`` (``direction="forward"``) or an output
        ``y`` (``"inverse"``). Nothing to do here (:class:`~pyroflows.transforms.ActNorm` overrides it); returns the
        transform. :meth:`pyroflows.flows.Flow.initialize` calls it for every transform of a flow."""
        if direction not in ("forward", "inverse"):
            raise ValueError(f"direction must be 'forward' or 'inverse', got {direction!r}")
        return self

    # ----------------------------------------------------------------- public API
    def forward_and_log_det(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(T(x), log|det ∂T/∂x|)`` in one pass."""
        name = type(self).__name__
        check_input(x, self.input_dim, "x", f"{name}: ")
        check_context(context, self.context_dim, f"{name}: ")
        return self._forward_ld(in_dtype_of(x, (self,), "x", f"{name}: "), context)

    def inverse_and_log_det(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(T⁻¹(y), log|det ∂T⁻¹/∂y|)`` in one pass; exact for any ``y``."""
        name = type(self).__name__
        check_input(y, self.input_dim, "y", f"{name}: ")
        check_context(context, self.context_dim, f"{name}: ")
        return self._inverse_ld(in_dtype_of(y, (self,), "y", f"{name}: "), context)

    def condition(self, context: Tensor) -> ConditionedTransform:
        """This transform with its context fixed: a plain ``torch.distributions.Transform``."""
        check_context(context, self.context_dim, f"{type(self).__name__}.condition: ")
        return ConditionedTransform(self, context)

    def _log_abs_det(self, x: Tensor, y: Tensor, context: Tensor | None) -> Tensor:
        """``log|det ∂y/∂x|`` given both sides; subclasses override it when one side is cheaper to read it from."""
        return self.forward_and_log_det(x, context)[1]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self._log_abs_det(x, y, None)

    def config(self) -> dict:
        """JSON-able description from which :func:`pyroflows.transforms.from_config` rebuilds this transform."""
        return self.__dict__["_flow_config"]

    def __hash__(self) -> int:
        return object.__hash__(self)

    __repr__ = nn.Module.__repr__

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, context_dim={self.context_dim}"


# A virtual subclass rather than a base: Pyro's ConditionalTransform is an ABC, and its ABCMeta would clash with
# PyroModule's metaclass in pyro.nn.module.to_pyro_module_ (isinstance checks in Pyro still pass).
ConditionalTransform.register(FlowTransform)


class ConditionedTransform(_FusedTransform, Transform):
    """A :class:`FlowTransform` with a fixed context, as a plain (stateless) torch ``Transform``."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, base: FlowTransform, context: Tensor | None) -> None:
        super().__init__(cache_size=0)
        self.base = base
        self.context = context

    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.base.forward_and_log_det(x, self.context)

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.base.inverse_and_log_det(y, self.context)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self.base._log_abs_det(x, y, self.context)

    def __repr__(self) -> str:
        return f"ConditionedTransform({type(self.base).__name__})"


class FlowChain(_FusedTransform, Transform):
    """A sequence of flow transforms with one context, applied left to right: ``T = T_n ∘ … ∘ T_1``.

    What ``Flow.transform(context)`` returns. Validates its input once and runs the fused passes of its parts.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, parts: list[FlowTransform], input_dim: int, context_dim: int, context: Tensor | None) -> None:
        super().__init__(cache_size=0)
        check_context(context, context_dim, "Flow.transform: ")
        self.parts = list(parts)
        self.input_dim = input_dim
        self.context = context

    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_input(x, self.input_dim, "x", "Flow.transform: ")
        return chain_forward(self.parts, in_dtype_of(x, self.parts, "x", "Flow.transform: "), self.context)

    def inverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        check_input(y, self.input_dim, "y", "Flow.transform: ")
        return chain_inverse(self.parts, in_dtype_of(y, self.parts, "y", "Flow.transform: "), self.context)


def chain_forward(parts: list[FlowTransform], x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
    """Unchecked fused forward pass through ``parts``."""
    total = None
    for t in parts:
        x, ld = t._forward_ld(x, context if t.context_dim else None)
        total = ld if total is None else total + ld
    if total is None:
        total = x.new_zeros(x.shape[:-1])
    return x, total


def chain_inverse(parts: list[FlowTransform], y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
    """Unchecked fused inverse pass through ``parts`` (last to first)."""
    total = None
    for t in reversed(parts):
        y, ld = t._inverse_ld(y, context if t.context_dim else None)
        total = ld if total is None else total + ld
    if total is None:
        total = y.new_zeros(y.shape[:-1])
    return y, total


def from_config(config: dict) -> FlowTransform:
    """Rebuild a transform (with fresh parameters) from :meth:`FlowTransform.config`."""
    from .transformers import revive_transformers

    try:
        cls = TRANSFORMS[config["type"]]
    except KeyError:
        raise ValueError(f"unknown transform type {config.get('type')!r} in saved configuration") from None
    return cls(**{k: from_config(v) if k in cls.transform_args else revive_transformers(v)
                  for k, v in config["kwargs"].items()})
