"""Input validation shared by transforms and distributions.

Every check raises a ``ValueError`` whose message names the fix (the same checks as pyroflows, with messages worded
for JAX arrays). Shape checks always run, at trace time too, since shapes are static; the NaN/inf check runs on
concrete arrays only (inside ``jax.jit`` values are abstract) and can be switched off with :func:`set_validation`,
e.g. to save its device-to-host transfer in a hot loop outside ``jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_VALIDATE = True


def set_validation(enabled: bool) -> None:
    """Turn the NaN/inf checks on inputs on or off (shape checks always run)."""
    global _VALIDATE
    _VALIDATE = bool(enabled)


def _all_finite(x) -> bool:
    """False only for a concrete array holding NaN/inf; True when validation is off or values are being traced."""
    if not _VALIDATE or isinstance(x, jax.core.Tracer):
        return True
    try:
        return bool(jnp.all(jnp.isfinite(x)))
    except jax.errors.ConcretizationTypeError:  # inside jit, even constants are staged
        return True


def check_input(x, input_dim: int, name: str = "input", where: str = "") -> None:
    """Check that ``x`` has shape ``(..., input_dim)`` and (when concrete) holds finite values."""
    shape = jnp.shape(x)
    if len(shape) == 0 or shape[-1] != input_dim:
        raise ValueError(
            f"{where}{name} has shape {tuple(shape)} but this flow has input_dim={input_dim}: pass an array of "
            f"shape (..., {input_dim}) or build the flow with input_dim={shape[-1] if shape else 1}"
        )
    if not _all_finite(x):
        bad = "NaN" if bool(jnp.any(jnp.isnan(x))) else "inf"
        raise ValueError(
            f"{where}{name} contains {bad} values: remove or impute them before calling the flow "
            "(or call numpyroflows.set_validation(False) to skip this check)"
        )


def check_context(context, context_dim: int, where: str = "") -> None:
    """Check that a context is given exactly when ``context_dim > 0`` and has the right size."""
    if context_dim == 0:
        if context is not None:
            shape = jnp.shape(context)
            raise ValueError(
                f"{where}got a context but this flow was built with context_dim=0: drop the context or build the "
                f"flow with context_dim={shape[-1] if shape else 1}"
            )
        return
    if context is None:
        raise ValueError(
            f"{where}this flow was built with context_dim={context_dim} and needs a context: call flow(context) / "
            f"transform.condition(context) with an array of shape (..., {context_dim})"
        )
    shape = jnp.shape(context)
    if len(shape) == 0 or shape[-1] != context_dim:
        raise ValueError(
            f"{where}context has shape {tuple(shape)} but the flow expects context_dim={context_dim}: pass an "
            f"array of shape (..., {context_dim})"
        )
    if not _all_finite(context):
        raise ValueError(f"{where}context contains NaN or inf values: clean the context before calling the flow")
