"""Trainable base distributions: the ``base`` of a :class:`~pyroflows.flows.Flow` whose parameters are the flow's.

A trainable base is a ``torch.nn.Module`` whose ``forward()`` returns a ``torch.distributions.Distribution`` with
``event_shape == (input_dim,)``. Given as ``Flow(transforms, base=...)`` it becomes a submodule of the flow: its
parameters appear in ``flow.parameters()`` (trained by :func:`pyroflows.fit`, registered by ``pyro.module``) and in
the ``state_dict`` under ``base.`` (``"base.loc"``, ``"base.raw_scale"``), the names numpyroflows uses, so
``export_params``/``import_params`` move them between the packages. A subclass of :class:`TrainableBase` is also
saved by :func:`pyroflows.save` (its constructor arguments, as for transforms); any other module works in a flow but
cannot be saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from flowcommon.starts import diagonal_start

from ..functional.affine import MIN_SCALE, affine_scale
from ..transforms.base import record_init_arguments

Tensor = torch.Tensor

#: name -> TrainableBase subclass, for rebuilding saved flows.
BASES: dict[str, type] = {}


class TrainableBase(nn.Module):
    """A base distribution with learnable parameters, savable with its flow: subclasses implement ``forward()``,
    returning a ``torch.distributions.Distribution`` with ``event_shape == (input_dim,)`` and no batch shape.

    Subclasses are registered by name and remember their constructor arguments (JSON-able ones; a ``dtype`` is not
    saved), so that :func:`pyroflows.save`/:func:`pyroflows.load` rebuild them; numpyroflows' class of the same name
    takes the same arguments and parameter names. ``sample``, ``rsample`` and ``log_prob`` call the distribution
    ``forward()`` returns, so the module can stand where code expects a distribution.

    Example:
        >>> class Laplace(TrainableBase):
        ...     def __init__(self, input_dim):
        ...         super().__init__(input_dim)
        ...         self.loc = nn.Parameter(torch.zeros(input_dim))
        ...     def forward(self):
        ...         return torch.distributions.Laplace(self.loc, 1.0).to_event(1)
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not issubclass(cls, PyroModule):  # pyro.nn.module.to_pyro_module_ mixes PyroModule into a class copy
            BASES[cls.__name__] = cls
        record_init_arguments(cls)

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        if int(input_dim) < 1:
            raise ValueError(f"input_dim must be a positive integer, got {input_dim}")
        self.input_dim = int(input_dim)

    def forward(self) -> Distribution:
        raise NotImplementedError

    @property
    def event_shape(self) -> torch.Size:
        return torch.Size([self.input_dim])

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        return self().rsample(torch.Size(sample_shape))

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        return self().sample(torch.Size(sample_shape))

    def log_prob(self, z: Tensor) -> Tensor:
        return self().log_prob(z)

    def config(self) -> dict:
        """JSON-able description (``{"type": class name, "kwargs": constructor arguments}``) from which
        :func:`base_from_config` rebuilds this base."""
        return self.__dict__["_flow_config"]

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}"


def base_from_config(config: dict) -> TrainableBase:
    """Rebuild a trainable base (fresh parameters) from :meth:`TrainableBase.config`."""
    try:
        cls = BASES[config["type"]]
    except KeyError:
        raise ValueError(f"unknown base distribution type {config.get('type')!r} in saved configuration; known: "
                         f"{sorted(BASES)}") from None
    return cls(**config["kwargs"])


class DiagonalNormal(TrainableBase):
    """A normal base distribution with learned mean and per-dimension scale: ``z ~ N(loc, diag(scale²))``.

    ``scale = 1e-3 + softplus(raw_scale + c)`` (:func:`~pyroflows.functional.affine.affine_scale`: ``raw_scale = 0``
    gives 1, and the scale grows linearly, not exponentially, in its raw parameter); parameters ``loc`` and
    ``raw_scale`` (``state_dict`` keys ``base.loc``, ``base.raw_scale`` inside a flow, as in numpyroflows).
    ``log N(z; loc, scale) = -Σ_i [(z_i - loc_i)² / (2 scale_i²) + log scale_i + log(2π)/2]``. It starts as the
    standard normal by default, so a flow given this base starts where the same flow with the fixed standard normal
    does. A learned diagonal Gaussian under the flow is what a final elementwise affine layer would give; as the
    base it keeps the flow's own layers for the shape.

    Args:
        input_dim: D.
        loc: starting mean, a number or ``D`` numbers.
        scale: starting standard deviation, a number or ``D`` numbers, each above the floor ``1e-3``.
        dtype: floating type of the parameters (``None``: torch's default dtype); not saved (the stored tensors
            carry their type).

    Example:
        >>> flow = Flow([AutoregressiveTransform(2, "spline")], base=DiagonalNormal(2))
        >>> flow, history = pyroflows.fit(flow, x)        # trains loc and raw_scale with the layers
        >>> pyroflows.save(flow, "flow.pt")

    Reference: zuko's ``UnconditionalDistribution(DiagNormal, loc, scale)`` base (trainable unless
    ``buffer=True``), FlowJAX's ``Normal`` base distribution (trainable unless its parameters are marked
    non-trainable); Papamakarios et al. (2021), "Normalizing flows for probabilistic modeling and inference", §2.1
    (a base distribution with parameters of its own).
    """

    def __init__(self, input_dim: int, loc: float | Sequence[float] = 0.0,
                 scale: float | Sequence[float] = 1.0, dtype: torch.dtype | None = None) -> None:
        super().__init__(input_dim)
        loc0, raw0 = diagonal_start(self.input_dim, loc, scale, "DiagonalNormal", MIN_SCALE)  # float64
        like = torch.empty(0, dtype=dtype)  # the default device, like every other parameter built here
        self.loc = nn.Parameter(torch.as_tensor(loc0).to(like))
        self.raw_scale = nn.Parameter(torch.as_tensor(raw0).to(like))

    @property
    def scale(self) -> Tensor:
        """The standard deviations ``1e-3 + softplus(raw_scale + c)``."""
        return affine_scale(self.raw_scale)

    def forward(self) -> Distribution:
        """``Independent(Normal(loc, scale), 1)``, a distribution with event shape ``(input_dim,)``."""
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1, validate_args=False)
