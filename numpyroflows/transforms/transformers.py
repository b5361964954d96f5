"""Transformers in JAX: invertible elementwise maps ``y_i = τ(x_i; θ_i)`` fed with raw parameters by a conditioner.

Mirrors :mod:`pyroflows.transforms.transformers`: same names (``"affine"``, ``"additive"``, ``"spline"``, ...), same
``num_params``, same raw layouts, same identity-at-zero convention. ``forward(x, params) -> (y, ladj)`` and
``inverse(y, params) -> (x, ladj)`` with elementwise ``ladj`` of the map computed. ``forward`` is the closed-form,
cheaper direction; MAF, coupling and elementwise layers evaluate it from data to noise, IAF layers from noise to data.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp

from ..functional import affine as F_aff
from ..functional import bspline as F_bs
from ..functional import mixture as F_mix
from ..functional import spline as F_rqs

Array = jax.Array

TRANSFORMERS: dict[str, type] = {}


class Transformer:
    """Base class (see :class:`pyroflows.transforms.transformers.Transformer`)."""

    name = ""
    num_params = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            TRANSFORMERS[cls.name] = cls

    def kwargs(self) -> dict:
        return {}

    def spec(self) -> dict:
        return {"name": self.name, **self.kwargs()}

    def identity_params(self) -> Array:
        """Raw parameters ``(num_params,)`` of the identity (or the closest map to it)."""
        return jnp.zeros(self.num_params)

    def forward(self, x: Array, params: Array) -> tuple[Array, Array]:
        raise NotImplementedError

    def inverse(self, y: Array, params: Array) -> tuple[Array, Array]:
        raise NotImplementedError

    #: Whether the transformer also takes its parameters first, ``(num_params,) + x.shape``, in ``_forward_first`` /
    #: ``_inverse_first``: what a MADE's output layer produces without a transpose (parameter-major units), used by
    #: autoregressive layers when set. The spline sets it (its bin selection runs ~2x faster on that layout on CPU);
    #: for the affine maps the usual layout measured faster (sequential sampling 0.87x FlowJAX against 1.05x).
    _params_first = False

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transformer) and self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash(repr(self))


class Affine(Transformer):
    """``y = shift + a · x``, ``a = exp(affine_log_scale(raw))`` (``scale="exp"``) or ``affine_scale(raw)``
    (``scale="softplus"``); mirrors the torch ``Affine``."""

    name = "affine"
    num_params = 2

    def __init__(self, scale: str = "exp") -> None:
        self.scale = F_aff.check_affine_scale(scale)

    def kwargs(self) -> dict:
        return {} if self.scale == "exp" else {"scale": self.scale}

    def forward(self, x: Array, params: Array) -> tuple[Array, Array]:
        return F_aff.affine_forward(x, params, self.scale)

    def inverse(self, y: Array, params: Array) -> tuple[Array, Array]:
        x, ld = F_aff.affine_inverse(y, params, self.scale)
        return x, -ld


class Additive(Transformer):
    """``y = x + shift`` (volume preserving; NICE, Dinh et al. 2014)."""

    name = "additive"
    num_params = 1

    def forward(self, x: Array, params: Array) -> tuple[Array, Array]:
        return F_aff.additive_forward(x, params)

    def inverse(self, y: Array, params: Array) -> tuple[Array, Array]:
        return F_aff.additive_inverse(y, params)


class RQSpline(Transformer):
    """Monotone rational-quadratic spline with identity tails (Durkan et al. 2019); ``num_params = 3K - 1``.

    As :class:`pyroflows.transforms.transformers.RQSpline`: :meth:`forward` is the direct rational formula,
    :meth:`inverse` the closed-form root."""

    name = "spline"

    def __init__(self, count_bins: int = 8, bound: float = 5.0) -> None:
        if int(count_bins) < 2:
            raise ValueError(f"count_bins must be >= 2, got {count_bins}")
        if not float(bound) > 0:
            raise ValueError(f"bound must be > 0, got {bound}")
        self.count_bins, self.bound = int(count_bins), float(bound)
        self.num_params = F_rqs.num_params(self.count_bins)

    def kwargs(self) -> dict:
        return {"count_bins": self.count_bins, "bound": self.bound}

    def forward(self, x: Array, params: Array) -> tuple[Array, Array]:
        return F_rqs.rqs_forward(x, params, self.bound)

    def inverse(self, y: Array, params: Array) -> tuple[Array, Array]:
        x, ld = F_rqs.rqs_inverse(y, params, self.bound)
        return x, -ld

    _params_first = True

    def _forward_first(self, x: Array, params: Array) -> tuple[Array, Array]:
        return F_rqs.rqs_forward(x, params, self.bound, param_axis=0)

    def _inverse_first(self, y: Array, params: Array) -> tuple[Array, Array]:
        x, ld = F_rqs.rqs_inverse(y, params, self.bound, param_axis=0)
        return x, -ld


def make_transformer(spec: str | dict | Transformer, **kwargs: Any) -> Transformer:
    """A transformer from a name, a spec dict or an instance (see :func:`pyroflows.transforms.make_transformer`)."""
    if isinstance(spec, Transformer):
        return spec
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("name")
        kwargs = {**kwargs, **spec}
    else:
        name = spec
    try:
        cls = TRANSFORMERS[name]
    except KeyError:
        raise ValueError(f"unknown transformer {name!r}; choose one of {sorted(TRANSFORMERS)}") from None
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted and v is not None})


def revive_transformers(value: Any) -> Any:
    """A saved configuration value with every transformer in it rebuilt (``{"__transformer__": spec}`` becomes
    :func:`make_transformer` ``(spec)``, lists element by element), as :func:`pyroflows.transforms.transformers.
    revive_transformers`: the one decoder of saved transformer specs in numpyroflows."""
    if isinstance(value, dict) and "__transformer__" in value:
        return make_transformer(value["__transformer__"])
    if isinstance(value, list):
        return [revive_transformers(v) for v in value]
    return value


class MonotoneBSpline(Transformer):
    """Monotone uniform quadratic B-spline on ``[-bound, bound]`` with ``count_bins`` intervals and C¹ linear tails
    (see :mod:`numpyroflows.functional.bspline`). Closed-form inverse. ``num_params = count_bins + 2``; raw zeros are
    exactly the identity."""

    name = "bspline"

    def __init__(self, count_bins: int = 8, bound: float = 5.0) -> None:
        if int(count_bins) < 1:
            raise ValueError(f"count_bins must be >= 1, got {count_bins}")
        if not float(bound) > 0:
            raise ValueError(f"bound must be > 0, got {bound}")
        self.count_bins, self.bound = int(count_bins), float(bound)
        self.num_params = F_bs.num_params(self.count_bins)

    def kwargs(self) -> dict:
        return {"count_bins": self.count_bins, "bound": self.bound}

    def forward(self, x: Array, params: Array) -> tuple[Array, Array]:
        return F_bs.bspline_forward(x, params, self.bound)

    def inverse(self, y: Array, params: Array) -> tuple[Array, Array]:
        x, ld = F_bs.bspline_inverse(y, params, self.bound)
        return x, -ld


class MonotoneMixture(Transformer):
    """``y = a·x + Σ_k w_k σ((x - b_k)/s_k)`` with ``a, s_k > 0``, ``w_k ≥ 0`` and ``K = count_bins`` sigmoid
    components (see :mod:`numpyroflows.functional.mixture`). Inverse by bracketed bisection plus a differentiable
    Newton step. ``num_params = 3 · count_bins + 1``; raw zeros are close to the identity (``x ≤ y ≤ x + 0.1``)."""

    name = "mixture"

    def __init__(self, count_bins: int = 8) -> None:
        if int(count_bins) < 1:
            raise ValueError(f"count_bins must be >= 1, got {count_bins}")
        self.count_bins = int(count_bins)
        self.num_params = F_mix.num_params(self.count_bins)

    def kwargs(self) -> dict:
        return {"count_bins": self.count_bins}

    def forward(self, x: Array, params: Array) -> tuple[Array, Array]:
        return F_mix.mixture_forward(x, params)

    def inverse(self, y: Array, params: Array) -> tuple[Array, Array]:
        x, ld = F_mix.mixture_inverse(y, params)
        return x, -ld
