"""Parameters in and out of numpyroflows flows, in the layout shared with pyroflows, and NumPyro registration."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro

from .flows.core import Flow


def export_params(flow: Flow) -> dict[str, np.ndarray]:
    """The flow's parameters as NumPy arrays, keyed like pyroflows' ``state_dict`` (``pyroflows.import_params`` takes
    them)."""
    return {k: np.asarray(v) for k, v in flow.params.items()}


def import_params(flow: Flow, params: dict[str, np.ndarray]) -> Flow:
    """``flow`` with the given parameters (e.g. from ``pyroflows.export_params``), keeping their dtype; returns a new
    flow (JAX values are immutable), unlike pyroflows' in-place version. Names must match exactly."""
    return flow.with_params({k: jnp.asarray(v) for k, v in params.items()})


def module(name: str, flow: Flow) -> Flow:
    """Register the flow's parameters with NumPyro (``numpyro.param("name$key", value)``) and return the flow with
    the values NumPyro holds: call it inside a model or guide, like ``pyro.module``."""
    return flow.with_params({k: numpyro.param(f"{name}${k}", v) for k, v in flow.params.items()})
