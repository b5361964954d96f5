"""Registering a flow's parameters with NumPyro: :func:`module`, the counterpart of ``pyro.module`` for numpyroflows.

A numpyroflows flow is an immutable pytree, so registration returns a flow: the same flow holding the values NumPyro
keeps under ``numpyro.param`` (initialised from the flow's own on the first call, then whatever SVI has learned).
pyroflows needs no counterpart: its flows are ``torch.nn.Module``\\ s and ``pyro.module`` registers them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpyro

if TYPE_CHECKING:
    from ..flows.core import Flow

F = TypeVar("F", bound="Flow")


def module(name: str, flow: F) -> F:
    """Register the flow's parameters with NumPyro and return the flow with the values NumPyro holds.

    Each parameter ``key`` of ``flow.params`` becomes ``numpyro.param(f"{name}${key}", value)``; call it inside a
    model or guide, like ``pyro.module``. Any object with ``params`` and ``with_params`` (a flow, a transform, a
    :class:`~numpyroflows.infer.FlowEncoder`) can be registered.

    Example:
        >>> flow = flows.NSF(input_dim=2, key=jax.random.PRNGKey(0))
        >>> def guide():
        ...     numpyro.sample("z", numpyroflows.module("flow", flow)())
    """
    return flow.with_params({k: numpyro.param(f"{name}${k}", v) for k, v in flow.params.items()})
