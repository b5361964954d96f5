"""Transformers in JAX: invertible elementwise maps ``y_i = τ(x_i; θ_i)`` fed with raw parameters by a conditioner.

A transformer is static configuration plus math (the math lives in :mod:`numpyroflows.functional`); it holds no
parameters and is not a pytree leaf. Every conditioner (constant/elementwise, coupling, autoregressive) takes any
transformer. Raw parameters have shape ``(..., D, num_params)`` and are unconstrained; raw zeros are (close to) the
identity map. ``forward(x, params) -> (y, ladj)`` and ``inverse(y, params) -> (x, ladj)`` with the elementwise
``ladj`` of the map computed; both are pure and jit/vmap-able.

Names for :func:`make_transformer`: ``"affine"``, ``"additive"``, ``"spline"`` (rational-quadratic, linear tails),
``"bspline"`` (monotone B-spline), ``"mixture"`` (positive mixture of monotone functions).

Which way ``τ`` runs: :meth:`Transformer.forward` is always the closed-form, cheaper direction of the map, and each
conditioner evaluates it in the direction its layer is fast and trained in. Masked autoregressive (MAF), coupling and
elementwise layers evaluate ``τ`` from data to noise, ``z = τ(x; θ)``, so maximum likelihood uses the direct formula
and an affine layer is linear on the density side, ``z = shift + scale·x`` (as zuko, FlowJAX and nflows
parameterize it). Inverse autoregressive (IAF) layers evaluate ``τ`` from noise to data, ``x = τ(z; θ)``, so sampling
(and variational inference) use the direct formula. Each layer's other direction uses :meth:`Transformer.inverse`.

Names, ``num_params``, raw layouts and the identity-at-zero convention are those of pyroflows' transformers, so a
conditioner's parameters mean the same in both packages.
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
    """Base class. Subclasses set ``name`` and ``num_params`` and implement ``forward``/``inverse``.

    ``forward(x, params) -> (y, ladj)`` and ``inverse(y, params) -> (x, ladj)``, where ``params`` is
    ``x.shape + (num_params,)`` (or broadcasts to it) and ``ladj`` is the elementwise log-derivative of the map
    computed (``log τ'(x)`` forward, ``-log τ'(x)`` inverse). A subclass with a ``name`` is registered in
    :data:`TRANSFORMERS` for :func:`make_transformer`; :meth:`spec` is its JSON-able configuration.
    """

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
    #: autoregressive layers when set. The spline sets it: its bin selection works on whole rows of that layout, over
    #: one long contiguous axis. For the affine maps, with only two parameters per value, the usual last-axis layout
    #: was the faster one in benchmarks, so they keep it.
    _params_first = False

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transformer) and self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash(repr(self))


class Affine(Transformer):
    """``y = shift + a · x`` with ``a = exp(s)``, ``s = affine_log_scale(raw)`` soft-clamped to ``(-5, 5)``
    (``scale="exp"``, the default), or ``a = affine_scale(raw, min_scale)``, a softplus with no upper bound
    (``scale="softplus"``); see :mod:`numpyroflows.functional.affine`. Raw layout ``[shift, raw_scale]``; raw zeros
    are the identity.

    The softplus form, with ``min_scale`` its floor (1e-3 by default), is FlowJAX's (whose floor is 1e-2): for
    porting a FlowJAX model, or where one layer must scale by more than e^5. Neither form wins on every data set, so
    guides, encoders and the recipes keep ``"exp"``.
    """

    name = "affine"
    num_params = 2

    def __init__(self, scale: str = "exp", min_scale: float | None = None) -> None:
        self.scale = F_aff.check_affine_scale(scale)
        if min_scale is not None and scale != "softplus":
            raise ValueError("min_scale sets the floor of scale='softplus'; the default 'exp' scale is soft-clamped "
                             "instead: drop min_scale or pass scale='softplus'")
        if min_scale is not None and not 0.0 < float(min_scale) < 1.0:
            raise ValueError(f"min_scale must lie in (0, 1) (the scale at raw zeros is 1), got {min_scale}")
        self.min_scale = None if min_scale is None else float(min_scale)

    def kwargs(self) -> dict:
        out = {} if self.scale == "exp" else {"scale": self.scale}
        return out if self.min_scale is None else {**out, "min_scale": self.min_scale}

    @property
    def _floor(self) -> float:
        return F_aff.MIN_SCALE if self.min_scale is None else self.min_scale

    def forward(self, x: Array, params: Array) -> tuple[Array, Array]:
        return F_aff.affine_forward(x, params, self.scale, self._floor)

    def inverse(self, y: Array, params: Array) -> tuple[Array, Array]:
        x, ld = F_aff.affine_inverse(y, params, self.scale, self._floor)
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

    Bins on ``[-bound, bound]`` (``count_bins`` of them, at least 2), identity outside. :meth:`forward` is the
    spline's direct rational formula (:func:`~numpyroflows.functional.spline.rqs_forward`), :meth:`inverse` its
    closed-form quadratic root, the dearer of the two; see the module docstring for which direction each layer
    evaluates forward."""

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
    """A transformer from a name (``"spline"``), a spec dict (``{"name": "spline", "count_bins": 8}``) or an instance.

    Keyword arguments the chosen transformer does not take (e.g. ``count_bins`` for ``"affine"``), and those that are
    ``None``, are ignored, so recipes can pass their spline options through unconditionally. An unknown name raises a
    ``ValueError`` listing :data:`TRANSFORMERS`.
    """
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
    """A saved configuration value with every transformer in it rebuilt: ``{"__transformer__": spec}`` (how
    :meth:`Transformer.spec` is stored in a flow's JSON configuration) becomes :func:`make_transformer` ``(spec)``,
    lists are revived element by element, anything else is returned as it is. The one decoder of saved transformer
    specs in numpyroflows, used by :func:`~numpyroflows.transforms.from_config` and :func:`numpyroflows.load`.

    Example:
        >>> revive_transformers([{"__transformer__": {"name": "affine", "scale": "softplus"}}, 3])
        [Affine(scale='softplus'), 3]
    """
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
