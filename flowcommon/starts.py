"""Starting values of parameters that both packages place from numbers, checked and computed once, in NumPy float64:
the learned normal base (``DiagonalNormal``) and the fixed affine map ``LowerCholeskyAffine``. Each backend converts
the arrays to its own type and dtype once, so the two packages start bit for bit alike."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def diagonal_start(d: int, loc: Any, scale: Any, where: str, min_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Starting ``(loc, raw_scale)`` (shape ``(d,)``) for ``loc`` and ``scale`` given as numbers or ``d`` numbers,
    with ``scale = min_scale + softplus(raw_scale + c)``, ``softplus(c) = 1 - min_scale`` (the packages'
    ``affine_scale``; exactly 0 for a scale of exactly 1); a ``ValueError`` naming the fix for other shapes,
    non-finite values or scales at or below the floor. ``where`` names the owner in the messages."""
    values = {}
    for name, v in (("loc", loc), ("scale", scale)):
        a = np.asarray(v, dtype=np.float64)
        if a.ndim > 1 or a.size not in (1, d):
            raise ValueError(f"{where}'s {name} must be a number or {d} numbers (input_dim={d}), got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{where}'s {name} must be finite, got {a.tolist()}")
        values[name] = np.broadcast_to(a.reshape(-1), (d,)).copy()
    s = values["scale"]
    if not np.all(s > min_scale):
        raise ValueError(f"{where}'s scale must be above its floor {min_scale:g}, got {s.tolist()}")
    y = s - min_scale
    raw = np.where(s == 1.0, 0.0, y + np.log(-np.expm1(-y)) - math.log(math.expm1(1.0 - min_scale)))
    return values["loc"], raw


def cholesky_start(d: int, loc: Any, scale_tril: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(loc, L)`` for ``LowerCholeskyAffine``: shapes ``(d,)`` and ``(d, d)``, finite, ``L`` lower triangular with
    a positive diagonal; a ``ValueError`` naming the fix otherwise."""
    loc, tril = np.asarray(loc, np.float64), np.asarray(scale_tril, np.float64)
    if loc.shape != (d,) or tril.shape != (d, d):
        raise ValueError(f"LowerCholeskyAffine needs loc of shape ({d},) and scale_tril of shape ({d}, {d}) "
                         f"(input_dim={d}), got {loc.shape} and {tril.shape}")
    if not (np.isfinite(loc).all() and np.isfinite(tril).all()):
        raise ValueError("LowerCholeskyAffine's loc and scale_tril must be finite")
    if np.any(np.triu(tril, 1) != 0) or not np.all(np.diag(tril) > 0):
        raise ValueError("LowerCholeskyAffine's scale_tril must be lower triangular with a positive diagonal (a "
                         "Cholesky factor: numpy.linalg.cholesky(cov))")
    return loc, tril
