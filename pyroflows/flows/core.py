"""``Flow``: a base distribution pushed through a stack of transforms, and the Pyro distribution it returns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import constraints

from .._checks import check_context, check_input, in_dtype
from ..transforms.base import FlowChain, FlowTransform, chain_forward, chain_inverse, record_init_arguments
from .bases import TrainableBase

Tensor = torch.Tensor
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

#: name -> Flow subclass (the recipes), for rebuilding saved flows.
RECIPES: dict[str, type] = {}


class Flow(nn.Module):
    """A normalizing flow ``x = T(z)``, ``z ~ base``, as a module; calling it returns a Pyro distribution.

    Args:
        transforms: the bijections, applied to the base noise in order (``T = T_n ∘ … ∘ T_1``).
        base: ``None`` for a standard normal on ``R^input_dim`` (it follows the module's device and dtype), a
            fixed ``torch.distributions.Distribution`` with ``event_shape == (input_dim,)``, or a trainable base: an
            ``nn.Module`` whose ``forward()`` returns such a distribution (e.g.
            :class:`~pyroflows.flows.DiagonalNormal`), then a submodule whose parameters are the flow's (trained by
            ``fit``, registered by ``pyro.module``, in the ``state_dict`` under ``base.``). A flow is saved with its
            base when the base is a :class:`~pyroflows.flows.TrainableBase`.

    Example:
        >>> flow = Flow([AutoregressiveTransform(2, "spline"), ReversePermutation(2), AutoregressiveTransform(2)])
        >>> d = flow()                      # with context_dim > 0: flow(context)
        >>> x = d.sample((100,)); lp = d.log_prob(x)
        >>> pyro.module("flow", flow)       # registers its parameters with Pyro
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not issubclass(cls, PyroModule):  # pyro.nn.module.to_pyro_module_ mixes PyroModule into a class copy
            RECIPES[cls.__name__] = cls
        record_init_arguments(cls)

    def __init__(self, transforms: Sequence[FlowTransform],
                 base: torch.distributions.Distribution | nn.Module | None = None):
        super().__init__()
        transforms = list(transforms)
        if not transforms:
            raise ValueError("a Flow needs at least one transform")
        for t in transforms:
            if not isinstance(t, FlowTransform):
                raise TypeError(
                    f"Flow takes pyroflows transforms (FlowTransform subclasses), got {type(t).__name__}; wrap other "
                    "torch transforms in a pyro TransformedDistribution instead"
                )
        dims = {t.input_dim for t in transforms}
        if len(dims) != 1:
            raise ValueError(f"all transforms must share one input_dim, got {sorted(dims)}")
        ctx = {t.context_dim for t in transforms if t.context_dim}
        if len(ctx) > 1:
            raise ValueError(f"all conditional transforms must share one context_dim, got {sorted(ctx)}")
        self.input_dim = dims.pop()
        self.context_dim = ctx.pop() if ctx else 0
        self.transforms = nn.ModuleList(transforms)
        _check_base(base, self.input_dim)
        self.base = base
        self.register_buffer("_ref", torch.zeros(()), persistent=False)  # tracks device and dtype

    # -------------------------------------------------------------------------------------------------------------
    def forward(self, context: Tensor | None = None) -> FlowDistribution:
        """The flow's distribution (conditioned on ``context`` of shape ``(..., context_dim)`` if it takes one)."""
        check_context(context, self.context_dim, f"{type(self).__name__}: ")
        if context is not None:
            context = in_dtype(context, self._ref.dtype, "context", f"{type(self).__name__}: ")
        return FlowDistribution(self, context)

    def transform(self, context: Tensor | None = None) -> FlowChain:
        """The bijection ``T`` (base to data) as a torch ``Transform``; ``T.inv`` is exact on fresh data."""
        return FlowChain(list(self.transforms), self.input_dim, self.context_dim, context)

    @property
    def requires_initialization(self) -> bool:
        """Whether a transform still waits for its data-dependent initialisation (an ActNorm not yet initialised):
        then call :meth:`initialize` (``pyroflows.fit`` does) or let the first call on data do it."""
        return any(t.requires_initialization for t in self.transforms)

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> Flow:
        """Run every transform's data-dependent initialisation (ActNorm's today) on data ``x`` of shape
        ``(..., input_dim)``, as the first ``flow(context).log_prob(x)`` does: ``x`` goes through the inverse pass,
        last transform first, and each transform is initialised on the batch it receives
        (:meth:`~pyroflows.transforms.FlowTransform.initialize` with ``direction="inverse"``), then applied; the pass
        stops below the last transform that needs it. Transforms already initialised keep their values. Returns the
        flow, changed in place (``numpyroflows``' ``Flow.initialize`` returns a new one).

        Example:
            >>> flow = Flow([ActNorm(2), AutoregressiveTransform(2), ActNorm(2)]).initialize(x_train[:4096])

        Reference: Kingma & Dhariwal (2018), "Glow" (ActNorm's data-dependent initialisation).
        """
        where = f"{type(self).__name__}.initialize: "
        check_input(x, self.input_dim, "x", where)
        check_context(context, self.context_dim, where)
        x = in_dtype(x, self._ref.dtype, "x", where)
        if context is not None:
            context = in_dtype(context, self._ref.dtype, "context", where)
        first = next((i for i, t in enumerate(self.transforms) if t.requires_initialization), len(self.transforms))
        for t in reversed(list(self.transforms)[first:]):
            t.initialize(x, "inverse")
            x, _ = t._inverse_ld(x, context if t.context_dim else None)
        return self

    def config(self) -> dict:
        """JSON-able configuration from which :func:`pyroflows.load` rebuilds the flow."""
        base = _base_config(self.base)
        if "_flow_config" in self.__dict__:
            config = self.__dict__["_flow_config"]
        else:
            config = {"type": "Flow", "transforms": [t.config() for t in self.transforms]}
        return config if base is None else {**config, "base": base}

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, context_dim={self.context_dim}"


def _check_base(base: Any, input_dim: int) -> None:
    """A ``TypeError``/``ValueError`` naming the fix for a base that is neither a distribution nor a module returning
    one, or whose event shape is not ``(input_dim,)``."""
    if base is None:
        return
    fix = f"(e.g. pyroflows.flows.DiagonalNormal({input_dim}))"
    try:
        dist = base() if isinstance(base, nn.Module) else base
    except TypeError as err:  # a module whose forward() needs arguments
        raise TypeError(f"base must be a torch Distribution or an nn.Module whose forward() returns one {fix}; "
                        f"calling {type(base).__name__}() failed: {err}") from err
    if not isinstance(dist, torch.distributions.Distribution):
        raise TypeError(f"base must be a torch Distribution or an nn.Module whose forward() returns one {fix}, got "
                        f"{type(dist).__name__}")
    if tuple(dist.event_shape) != (input_dim,):
        raise ValueError(f"base must have event_shape ({input_dim},), got {tuple(dist.event_shape)}")


def _base_config(base: Any) -> dict | None:
    """The saved configuration of a flow's base (``None`` for the standard normal); a ``ValueError`` naming the fix
    for a base that cannot be saved."""
    if base is None:
        return None
    if isinstance(base, TrainableBase):
        return base.config()
    raise ValueError(
        f"a flow with a custom base distribution ({type(base).__name__}) cannot be saved: only the standard normal "
        "and trainable bases (pyroflows.flows.TrainableBase subclasses, e.g. DiagonalNormal(input_dim, loc, scale)) "
        "are saved with their flow. Use one of those (a DiagonalNormal whose parameters you set, or your own "
        "TrainableBase subclass), or save the transforms and rebuild the flow around your base after loading")


def base_distribution(flow: Flow) -> torch.distributions.Distribution | None:
    """``flow``'s base as a distribution: the fixed one, what a trainable base's ``forward()`` returns, or ``None``
    for the standard normal."""
    base = flow.base
    return base() if isinstance(base, nn.Module) else base


def base_log_prob(flow: Flow, z: Tensor) -> Tensor:
    """Log-density of ``flow``'s base at ``z``: ``flow.base`` when set (a trainable one through its ``forward()``),
    else the standard normal, summed over the last axis."""
    base = base_distribution(flow)
    if base is not None:
        return base.log_prob(z)
    return -0.5 * (z * z).sum(-1) - flow.input_dim * _HALF_LOG_2PI


class FlowDistribution(TorchDistribution):
    """The distribution of a :class:`Flow` (optionally conditioned on a context), a Pyro ``TorchDistribution``.

    ``batch_shape`` is the context's batch shape (or ``()``), ``event_shape`` is ``(input_dim,)``. ``log_prob`` runs
    the inverse pass, ``rsample`` the forward pass, and ``rsample_and_log_prob`` draws and scores in one forward pass.

    Scoring its own sample: ``rsample``/``sample`` compute the density of what they return in the same forward pass.
    When ``log_prob`` is next called with *that very tensor* (same object, not modified in place since), it returns
    this density instead of running the inverse: this is how Pyro's ``Trace_ELBO`` scores a guide sample, and it makes
    an IAF guide cost one pass per step. The reuse is one-shot and only happens when nothing it depends on changed
    (the sample's and the parameters' version counters, the grad mode); it is never needed for correctness: any other
    tensor, a second call, or a changed parameter goes through the exact inverse.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, flow: Flow, context: Tensor | None = None, batch_shape: torch.Size | None = None,
                 validate_args: bool | None = None) -> None:
        self.flow = flow
        ctx_batch = torch.Size(context.shape[:-1]) if context is not None else torch.Size()
        batch_shape = ctx_batch if batch_shape is None else torch.Size(batch_shape)
        if context is not None and batch_shape != ctx_batch:
            try:
                context = context.expand(batch_shape + context.shape[-1:])
            except RuntimeError:
                raise ValueError(
                    f"{type(flow).__name__}: cannot expand the distribution to batch shape {tuple(batch_shape)}: its "
                    f"context has batch shape {tuple(ctx_batch)} (context shape {tuple(context.shape)}). Pass one "
                    f"context row per draw (a context of shape {tuple(batch_shape) + (context.shape[-1],)}, e.g. "
                    f"one per element of the pyro.plate), or a single context row to share") from None
        self.context = context
        self._own_sample: tuple | None = None  # (sample, its version, log_prob, parameter versions, grad mode)
        super().__init__(batch_shape, torch.Size([flow.input_dim]), validate_args=False)

    # ----------------------------------------------------------------------------------------------- base density
    def _base_sample(self, shape: torch.Size) -> Tensor:
        base = base_distribution(self.flow)
        if base is not None:
            return base.rsample(shape)
        ref = self.flow._ref
        return torch.randn(shape + self.event_shape, device=ref.device, dtype=ref.dtype)

    def _base_log_prob(self, z: Tensor) -> Tensor:
        return base_log_prob(self.flow, z)

    # ----------------------------------------------------------------------------------------------- API
    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        x, lp = self.rsample_and_log_prob(sample_shape)
        self._own_sample = (x, x._version, lp, self._param_versions(), torch.is_grad_enabled())
        return x

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample_and_log_prob(sample_shape)[0]

    def _param_versions(self) -> tuple[int, ...]:
        return tuple(p._version for p in self.flow.parameters())

    def _reuse(self, value: Tensor) -> Tensor | None:
        """The density saved by the last ``rsample`` if ``value`` is that very sample and nothing it depends on has
        changed since (the sample, the parameters, the grad mode); consumed on use."""
        own, self._own_sample = self._own_sample, None
        if own is None or value is not own[0]:
            return None
        x, version, lp, params, grad_mode = own
        if value._version != version or grad_mode != torch.is_grad_enabled() or params != self._param_versions():
            return None
        return lp

    def rsample_and_log_prob(self, sample_shape: Sequence[int] = ()) -> tuple[Tensor, Tensor]:
        """Draw reparameterized samples and their log-density in one forward pass."""
        z = self._base_sample(torch.Size(sample_shape) + self.batch_shape)
        x, ladj = chain_forward(list(self.flow.transforms), z, self.context)
        return x, self._base_log_prob(z) - ladj

    def sample_and_log_prob(self, sample_shape: Sequence[int] = ()) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return self.rsample_and_log_prob(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        reused = self._reuse(value)
        if reused is not None:
            return reused
        where = f"{type(self.flow).__name__}.log_prob: "
        check_input(value, self.flow.input_dim, "value", where)
        value = in_dtype(value, self.flow._ref.dtype, "value", where)
        if self.context is not None:
            self._check_batch(value, where)
        z, ladj = chain_inverse(list(self.flow.transforms), value, self.context)
        lp = self._base_log_prob(z) + ladj
        if self.batch_shape:
            lp = lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))
        return lp

    def _check_batch(self, value: Tensor, where: str) -> None:
        """A ``ValueError`` naming both shapes and the fix when ``value``'s batch shape and the context's do not
        broadcast (instead of a bare size mismatch from inside a conditioner)."""
        try:
            torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        except RuntimeError:
            ctx = tuple(self.context.shape)
            raise ValueError(
                f"{where}value has batch shape {tuple(value.shape[:-1])} (shape {tuple(value.shape)}) but the context "
                f"has batch shape {tuple(self.batch_shape)} (shape {ctx}), and the two do not broadcast: pass one "
                f"context row per row of value (a context of shape {tuple(value.shape[:-1]) + ctx[-1:]}), or a single "
                f"context row of shape (1, {ctx[-1]}) to share") from None

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> FlowDistribution:
        batch_shape = torch.Size(batch_shape)
        return FlowDistribution(self.flow, self.context, batch_shape)

    def __repr__(self) -> str:
        return f"FlowDistribution({type(self.flow).__name__}, batch_shape={tuple(self.batch_shape)}, " \
               f"event_shape={tuple(self.event_shape)})"
