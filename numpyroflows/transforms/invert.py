"""``Invert``: any transform turned around."""

from __future__ import annotations

from typing import Any

import jax

from .base import FlowTransform, _freeze

Array = jax.Array
_PREFIX = "transform."


class Invert(FlowTransform):
    """The inverse of a transform, as a transform: ``Invert(T)`` maps ``x`` to ``T⁻¹(x)`` and back with ``T``.

    Math: forward ``y = T⁻¹(x)`` with ``log|det ∂y/∂x| = -log|det ∂T/∂u|`` at ``u = y`` (the wrapped transform's
    inverse pass, whose log-determinant it returns as it is), inverse ``x = T(y)`` with the log-determinant of ``T``'s
    forward pass. Both are exact; each costs what the other direction of ``T`` costs, so inverting a MAF layer
    (density-fast) gives a sampling-fast layer, and the other way round. The context, ``input_dim`` and
    ``context_dim`` are those of ``T``; the parameters are ``T``'s, under ``transform.`` (``params`` keys
    ``transform.<name>``, pyroflows' ``state_dict`` keys). The wrapped transform is the pytree child, so ``jit``,
    ``grad`` and ``with_params`` reach its parameters.

    A data-dependent initialisation (an :class:`~numpyroflows.transforms.ActNorm` inside) runs in the other direction:
    ``Invert(T).initialize(v, "forward")`` is ``Invert(T.initialize(v, "inverse"))``.

    Args:
        transform: the numpyroflows transform to invert (any :class:`FlowTransform`, an ``Invert`` included).
        key: unused (the wrapped transform holds the parameters); accepted so that ``from_config`` can pass one.

    Example:
        >>> layer = Invert(AutoregressiveTransform(3, "spline", key=jax.random.PRNGKey(0)))
        >>> flow = Flow([Invert(LULinear(3, key=jax.random.PRNGKey(1))), layer])
        >>> y, ld = layer.forward_and_log_det(jnp.ones((5, 3)))

    Reference: FlowJAX's ``Invert`` and zuko's ``Inverse`` (the same construction); Papamakarios et al. (2021),
    "Normalizing flows for probabilistic modeling and inference", §2.2 (invertible transformations compose and
    invert, with negated log-determinants).
    """

    transform_args = ("transform",)

    def __new__(cls, *args: Any, **kwargs: Any) -> Invert:
        # checked here, before the recorded configuration (JSON) of the argument is written by the __init__ wrapper
        # (copy and pickle call __new__ without arguments)
        transform = args[0] if args else kwargs.get("transform")
        if (args or kwargs) and not isinstance(transform, FlowTransform):
            raise TypeError(f"Invert takes a numpyroflows transform (a FlowTransform subclass), got "
                            f"{type(transform).__name__}")
        return super().__new__(cls)

    def __init__(self, transform: FlowTransform, *, key: Array | None = None) -> None:
        # not FlowTransform.__init__: the parameters are the wrapped transform's (``params`` is a view of them)
        self.input_dim = transform.input_dim
        self.context_dim = transform.context_dim
        self.transform = transform

    @property
    def params(self) -> dict[str, Array]:
        """The wrapped transform's parameters, keyed ``"transform.<name>"``."""
        return {_PREFIX + k: v for k, v in self.transform.params.items()}

    @staticmethod
    def _inner(params: dict[str, Array]) -> dict[str, Array]:
        return {k[len(_PREFIX):]: v for k, v in params.items()}

    def with_params(self, params: dict[str, Array]) -> Invert:
        """A copy with other parameter values (names as in :attr:`params`)."""
        expected = set(self.params)
        missing, unexpected = expected - set(params), set(params) - expected
        if missing or unexpected:
            raise ValueError(f"parameter names do not match Invert: missing {sorted(missing)}, unexpected "
                             f"{sorted(unexpected)}")
        return self._wrapping(self.transform.with_params(self._inner(params)))

    def _wrapping(self, transform: FlowTransform) -> Invert:
        new = object.__new__(type(self))
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k != "_inv"})
        new.transform = transform
        return new

    @property
    def requires_initialization(self) -> bool:
        """Whether the wrapped transform still waits for its data-dependent initialisation."""
        return self.transform.requires_initialization

    def initialize(self, v: Array, direction: str = "forward") -> Invert:
        """This layer with the wrapped transform initialised in the opposite direction (this layer's input is its
        output). Pure and jit-able."""
        super().initialize(v, direction)
        return self._wrapping(self.transform.initialize(v, "inverse" if direction == "forward" else "forward"))

    def _forward_ld(self, params: dict, x: Array, context: Array | None) -> tuple[Array, Array]:
        return self.transform._inverse_ld(self._inner(params), x, context)

    def _inverse_ld(self, params: dict, y: Array, context: Array | None) -> tuple[Array, Array]:
        return self.transform._forward_ld(self._inner(params), y, context)

    # pytree: the wrapped transform is the one child
    def tree_flatten(self):
        static = tuple(sorted((k, _freeze(v)) for k, v in self.__dict__.items() if k not in ("transform", "_inv")))
        return (self.transform,), static

    @classmethod
    def tree_unflatten(cls, aux_data: Any, children: Any) -> Invert:
        new = object.__new__(cls)
        new.__dict__.update(dict(aux_data))
        (new.transform,) = children
        return new

    def __repr__(self) -> str:
        return f"Invert({self.transform!r})"
