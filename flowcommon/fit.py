"""The backend-free half of :func:`fit`: its history record, the data checks, the validation split, the step budget,
the batch order and the messages. NumPy only, so that pyroflows and numpyroflows check the same data in the same way
and train on the same rows in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_MAX_STEPS = 1000
_INIT_ROWS = 4096  # rows used for data-dependent initialisation (ActNorm)
_EVAL_BATCH = 4096  # rows per batch when evaluating the validation loss


# ===================================================================================================== history
@dataclass
class FitHistory:
    """What :func:`fit` did: losses, the evaluation that was kept, and why it stopped (the same in both packages).

    Attributes:
        train_loss: mini-batch loss (mean NLL in nats per sample) of every step, in order. After a failure it ends
            with the non-finite value that stopped the run.
        val_loss: ``(step, value)`` of each evaluation of the validation loss (mean NLL over the validation rows,
            with the parameters after ``step`` updates; step 0 is the initial flow).
        best_step: the step whose parameters the returned flow holds.
        best_val_loss: its validation loss (``None`` without validation).
        stopped: ``"max_steps"`` (the step budget, from ``max_steps`` or ``epochs``, was used up),
            ``"early_stopping"``, ``"nan"`` (non-finite loss or gradient) or ``"interrupted"`` (KeyboardInterrupt).
        message: a sentence saying what happened and which parameters were kept.
        bits_per_dim: with ``dequantize=True``, ``best_val_loss / (D ln 2)`` (the training NLL of the returned flow on a
            fixed noise draw when there is no validation set); ``None`` otherwise.
        num_steps: optimizer updates applied.
        seconds: wall time of the training loop (in JAX, compilation included).
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[tuple[int, float]] = field(default_factory=list)
    best_step: int = 0
    best_val_loss: float | None = None
    stopped: str = ""
    message: str = ""
    bits_per_dim: float | None = None
    num_steps: int = 0
    seconds: float = 0.0

    @property
    def steps_per_second(self) -> float:
        """Optimizer steps per second of wall time."""
        return self.num_steps / self.seconds if self.seconds > 0 else float("nan")

    def __repr__(self) -> str:
        best = "n/a" if self.best_val_loss is None else f"{self.best_val_loss:.4f}"
        bpd = "" if self.bits_per_dim is None else f", bits_per_dim={self.bits_per_dim:.4f}"
        return (f"FitHistory(stopped={self.stopped!r}, num_steps={self.num_steps}, best_step={self.best_step}, "
                f"best_val_loss={best}{bpd})")


# ===================================================================================================== data checks
def _to_numpy(a: Any, name: str) -> np.ndarray:
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be a numeric array of shape (N, D) (NumPy, torch or JAX), got dtype "
                        f"{arr.dtype}")
    return arr


def _check_table(arr: np.ndarray, width: int, name: str, width_name: str) -> None:
    if arr.ndim != 2:
        hint = f"; for one column use {name}.reshape(-1, 1)" if arr.ndim == 1 else ""
        raise ValueError(f"{name} must be a 2-D array of shape (N, {width}), one row per sample, got shape "
                         f"{arr.shape}{hint}")
    if arr.shape[1] != width:
        raise ValueError(f"{name} has {arr.shape[1]} columns but the flow's {width_name} is {width}; pass an array of "
                         f"shape (N, {width}) or build the flow with {width_name}={arr.shape[1]}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum())} rows with NaN or inf values (the first is row "
                         f"{int(np.argmax(bad))}): remove or impute them before fitting")


def _check_context(ctx: Any, rows: int, context_dim: int, name: str, data_name: str) -> np.ndarray | None:
    if context_dim == 0:
        if ctx is not None:
            width = np.shape(ctx)[-1] if np.ndim(ctx) else 1
            raise ValueError(f"got {name} but the flow was built with context_dim=0: drop {name}= or build the flow "
                             f"with context_dim={width}")
        return None
    if ctx is None:
        raise ValueError(f"the flow was built with context_dim={context_dim}: pass {name}= (an array of shape "
                         f"({rows}, {context_dim}), one row per row of {data_name})")
    arr = _to_numpy(ctx, name)
    _check_table(arr, context_dim, name, "context_dim")
    if arr.shape[0] != rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows but {data_name} has {rows}: pass one context row per "
                         f"{data_name} row")
    return arr


def _check_integer(arr: np.ndarray, name: str) -> None:
    frac = arr != np.round(arr)
    if frac.any():
        r, c = (int(i) for i in np.argwhere(frac)[0])
        raise ValueError(f"dequantize=True needs integer-valued {name} (counts, pixel values 0..255), but {name}[{r}, "
                         f"{c}] = {arr[r, c]}; pass dequantize=False for continuous data")


@dataclass
class _Split:
    x_train: np.ndarray
    c_train: np.ndarray | None
    x_val: np.ndarray | None
    c_val: np.ndarray | None
    rng: np.random.Generator


def _prepare(flow: Any, data: Any, context: Any, validation_fraction: float, validation_data: Any,
             validation_context: Any, dequantize: bool, seed: int) -> _Split:
    """Check the data and split it (a seeded permutation; its last ``validation_fraction`` is the validation set)."""
    d, k = flow.input_dim, flow.context_dim
    x = _to_numpy(data, "data")
    _check_table(x, d, "data", "input_dim")
    c = _check_context(context, x.shape[0], k, "context", "data")
    if not 0.0 <= float(validation_fraction) < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if dequantize:
        _check_integer(x, "data")
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    xv = cv = None
    if validation_data is not None:
        xv = _to_numpy(validation_data, "validation_data")
        _check_table(xv, d, "validation_data", "input_dim")
        if xv.shape[0] < 1:
            raise ValueError("validation_data has no rows: pass at least one row, or validation_data=None")
        cv = _check_context(validation_context, xv.shape[0], k, "validation_context", "validation_data")
        if dequantize:
            _check_integer(xv, "validation_data")
        n_val = 0
    else:
        if validation_context is not None:
            raise ValueError("validation_context= is only used with validation_data=; drop it (the validation rows "
                             "split off data= take their rows of context=)")
        n_val = max(1, int(round(float(validation_fraction) * n))) if validation_fraction > 0 else 0
    if n - n_val < 2:
        what = f" plus {n_val} validation row{'s' if n_val > 1 else ''} (validation_fraction={validation_fraction})" \
            if n_val else ""
        raise ValueError(f"data has {n} rows, too few to fit: fit needs at least 2 training rows{what}; pass more rows"
                         + (", or validation_fraction=0 to train on all of them" if n_val else ""))
    if n_val:
        perm = rng.permutation(n)
        tr, va = perm[: n - n_val], perm[n - n_val:]
        xv, x = x[va], x[tr]
        if c is not None:
            cv, c = c[va], c[tr]
    return _Split(x, c, xv, cv, rng)


def _budget(n_train: int, batch_size: int, max_steps: int | None, epochs: int | None,
            eval_every: int | None) -> tuple[int, int, int, int]:
    """(batch size, steps per epoch, total steps, steps between evaluations)."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if max_steps is not None and epochs is not None:
        raise ValueError("pass either max_steps= or epochs=, not both")
    b = min(int(batch_size), n_train)
    per_epoch = n_train // b
    if epochs is not None:
        if int(epochs) < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs}")
        total = int(epochs) * per_epoch
    else:
        total = DEFAULT_MAX_STEPS if max_steps is None else int(max_steps)
        if total < 1:
            raise ValueError(f"max_steps must be a positive integer, got {max_steps}")
    if eval_every is None:
        every = min(max(per_epoch, 50), 1000)
    else:
        every = int(eval_every)
        if every < 1:
            raise ValueError(f"eval_every must be a positive integer, got {eval_every}")
    return b, per_epoch, total, every


class _Batches:
    """Row indices of the training batches: a fresh seeded permutation per epoch, last partial batch dropped."""

    def __init__(self, rng: np.random.Generator, n: int, batch: int) -> None:
        self.rng, self.n, self.batch = rng, n, batch
        self.per_epoch = n // batch
        self._epoch: np.ndarray | None = None
        self._pos = 0

    def next(self, steps: int) -> np.ndarray:
        """Indices of the next ``steps`` batches, shape ``(steps, batch)``."""
        out = np.empty((steps, self.batch), dtype=np.int64)
        for i in range(steps):
            if self._epoch is None or self._pos == self.per_epoch:
                self._epoch = self.rng.permutation(self.n)[: self.per_epoch * self.batch].reshape(self.per_epoch, -1)
                self._pos = 0
            out[i] = self._epoch[self._pos]
            self._pos += 1
        return out


def _standardize_stats(x: np.ndarray, dequantize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd per column of the training data (of ``x + u``, ``u ~ U[0,1)``, with dequantization: mean + 1/2,
    variance + 1/12); columns with zero spread get sd 1."""
    x = x.astype(np.float64)
    mean, var = x.mean(0), x.var(0)
    if dequantize:
        mean, var = mean + 0.5, var + 1.0 / 12.0
    sd = np.sqrt(var)
    return mean, np.where(sd > 0, sd, 1.0)


def _outcome(stopped: str, step: int, best_step: int, best: float | None, patience: int | None, lr: float) -> str:
    kept = (f"kept the parameters of step {best_step}" +
            (f" (validation NLL {best:.6g})" if best is not None else ""))
    if stopped == "max_steps":
        tail = "" if best is not None else " (no validation set: the final parameters)"
        return f"finished the budget of {step} steps; {kept}{tail}"
    if stopped == "early_stopping":
        return (f"stopped early at step {step}: the validation NLL did not improve in {patience} evaluations; "
                f"{kept}")
    if stopped == "interrupted":
        return f"interrupted at step {step}; {kept}"
    return (f"the loss or its gradient was not finite at step {step}: training stopped and {kept}. Lower the learning "
            f"rate (lr={lr:g}), pass standardize=True for data far from unit scale, or check the data")
