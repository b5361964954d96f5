"""Input validation shared by transforms and distributions.

Every check raises a ``ValueError`` whose message names the fix. Shape checks are free (no device sync); the NaN
check needs a sync and can be switched off with :func:`set_validation` for hot loops on a GPU.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

_VALIDATE = True


def set_validation(enabled: bool) -> None:
    """Turn the NaN/inf checks on inputs on or off (shape checks always run)."""
    global _VALIDATE
    _VALIDATE = bool(enabled)


def validation_enabled() -> bool:
    """Whether the value checks run: on, and not inside a trace (``torch.jit.trace``, ``torch.compile``,
    ``torch.export``), where a data-dependent ``bool()`` would break the graph. Shape checks always run."""
    return _VALIDATE and not (torch.jit.is_tracing() or torch.compiler.is_compiling())


def check_input(x: torch.Tensor, input_dim: int, name: str = "input", where: str = "") -> None:
    """Check that ``x`` has shape ``(..., input_dim)`` and holds finite values."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != input_dim:
        raise ValueError(
            f"{where}{name} has shape {tuple(x.shape)} but this flow has input_dim={input_dim}: pass a tensor of "
            f"shape (..., {input_dim}) or build the flow with input_dim={x.shape[-1] if x.dim() else 1}"
        )
    if validation_enabled() and not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "inf"
        raise ValueError(
            f"{where}{name} contains {bad} values: remove or impute them before calling the flow "
            "(or call pyroflows.set_validation(False) to skip this check)"
        )


def check_context(context: torch.Tensor | None, context_dim: int, where: str = "") -> None:
    """Check that a context is given exactly when ``context_dim > 0`` and has the right size."""
    if context_dim == 0:
        if context is not None:
            raise ValueError(
                f"{where}got a context but this flow was built with context_dim=0: drop the context or build the "
                f"flow with context_dim={context.shape[-1] if context.dim() else 1}"
            )
        return
    if context is None:
        raise ValueError(
            f"{where}this flow was built with context_dim={context_dim} and needs a context: call flow(context) / "
            f"transform.condition(context) with a tensor of shape (..., {context_dim})"
        )
    if not isinstance(context, torch.Tensor):
        raise TypeError(f"{where}context must be a torch.Tensor, got {type(context).__name__}")
    if context.dim() == 0 or context.shape[-1] != context_dim:
        raise ValueError(
            f"{where}context has shape {tuple(context.shape)} but the flow expects context_dim={context_dim}: pass "
            f"a tensor of shape (..., {context_dim})"
        )
    if validation_enabled() and not bool(torch.isfinite(context).all()):
        raise ValueError(f"{where}context contains NaN or inf values: clean the context before calling the flow")


def in_dtype(x: Tensor, dtype: torch.dtype, name: str, where: str) -> Tensor:
    """``x`` in the flow's dtype when that loses nothing (integers, bool, lower-precision floats: torch's type
    promotion gives the flow's dtype); a ``TypeError`` naming both fixes when it would round (float64 data for a
    float32 flow), as ``torch.nn.Linear`` refuses it too, instead of its bare ``mat1 and mat2`` message."""
    if x.dtype == dtype:
        return x
    if torch.promote_types(x.dtype, dtype) == dtype:
        return x.to(dtype)
    cast = {torch.float32: "float()", torch.float64: "double()", torch.float16: "half()"}.get(dtype, f"to({dtype})")
    grow = {torch.float64: "double()", torch.float32: "float()"}.get(x.dtype, f"to({x.dtype})")
    raise TypeError(f"{where}{name} is {x.dtype} but the flow computes in {dtype}: call flow.{grow} to compute in "
                    f"{x.dtype}, or pass {name}.{cast} (rounds {name} to {dtype})")


def in_dtype_of(x: Tensor, parts, name: str, where: str) -> Tensor:
    """:func:`in_dtype` for the dtype of the first floating parameter of ``parts`` (transforms); a parameter-free
    stack takes integer and bool inputs in torch's default dtype and any floating input as it is."""
    for part in parts:
        for p in part.parameters():
            if p.is_floating_point():
                return in_dtype(x, p.dtype, name, where)
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())
