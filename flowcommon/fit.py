"""The backend-free half of :func:`fit`: its history record, the data checks, the validation split, the step budget,
the batch order, the standardisation, the training loop's control (evaluations, the best parameters, patience, the
callback, the progress bar) and the messages. NumPy only, so that pyroflows and numpyroflows check the same data in the
same way, train on the same rows in the same order and stop for the same reasons; each package supplies the steps.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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
            ``"early_stopping"``, ``"callback"`` (the callback returned True), ``"nan"`` (non-finite loss or
            gradient) or ``"interrupted"`` (KeyboardInterrupt).
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
    if not dequantize and (not np.issubdtype(x.dtype, np.floating) or bool(np.all(x == np.round(x)))):
        warnings.warn("fit: data holds only integer values (counts, pixels, ratings): a continuous density fitted to "
                      "them piles up on the integers, and its likelihood can exceed any discrete one, so its NLL "
                      "means nothing. Pass dequantize=True (fits x + u, u ~ U[0, 1), whose likelihood lower-bounds "
                      "the discrete one), or add noise yourself if the values are rounded measurements",
                      UserWarning, stacklevel=3)
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


@dataclass
class _Standardization:
    """The map ``x = mean + sd ⊙ y`` between data ``x`` and the standardised ``y`` that the flow is trained on (float64,
    one ``mean`` and ``sd`` per column), with ``log|det| = Σ log sd``: ``log p(x) = log p_y(y) - Σ log sd``."""

    mean: np.ndarray
    sd: np.ndarray

    @property
    def log_det(self) -> float:
        """``Σ log sd``: what a negative log-likelihood in data space adds to the one in standardised space."""
        return float(np.sum(np.log(self.sd)))

    def apply(self, x: np.ndarray | None) -> np.ndarray | None:
        """``y = (x - mean) / sd``, computed in float64."""
        return None if x is None else (np.asarray(x, np.float64) - self.mean) / self.sd

    def compose(self, shift: np.ndarray, scale: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """The data-space affine ``x = loc + s ⊙ u`` equal to the standardisation after a trained affine
        ``y = shift + scale ⊙ u``: ``loc = mean + sd ⊙ shift``, ``s = sd ⊙ scale`` (float64); a scale that training
        pushed to the affine's ``floor`` or below is raised just above it, with a warning."""
        loc = self.mean + self.sd * np.asarray(shift, np.float64)
        s = self.sd * np.asarray(scale, np.float64)
        low = s <= floor
        if low.any():
            warnings.warn(f"fit: the data-space scale of column(s) {np.flatnonzero(low).tolist()} fell to the floor "
                          f"{floor:g} of the DiagonalAffine that holds the standardisation and was raised above it: "
                          "the returned flow differs slightly from the trained one; rescale those columns (multiply "
                          "them by 1000) and fit again", RuntimeWarning, stacklevel=5)
            s = np.where(low, floor * (1 + 1e-6), s)
        return loc, s


def _standardize_stats(x: np.ndarray, dequantize: bool, eps: float, floor: float) -> _Standardization:
    """The standardisation of the training rows ``x``: mean and sd per column in float64 (of ``x + u``,
    ``u ~ U[0,1)``, with dequantization: mean + 1/2, variance + 1/12).

    Refuses, naming the fix, what the data-space affine that holds it cannot represent: a constant column (no
    density), a column whose sd is at or below the affine's scale ``floor``, and a column whose offset is so large
    against its sd that the flow's dtype (machine epsilon ``eps``) resolves it only to more than 1% of an sd.
    """
    x = np.asarray(x, np.float64)
    mean, var = x.mean(0), x.var(0)
    if dequantize:
        mean, var = mean + 0.5, var + 1.0 / 12.0
    sd = np.sqrt(var)
    for j in range(x.shape[1]):
        if sd[j] == 0:
            raise ValueError(f"standardize=True: column {j} of data is constant (every training row holds "
                             f"{x[0, j]:g}), so it has no density to fit: drop the column")
        if sd[j] <= floor:
            raise ValueError(f"standardize=True: column {j} of data has sd {sd[j]:.3g}, at or below the floor "
                             f"{floor:g} of the DiagonalAffine scale that would hold it: rescale the column (multiply "
                             f"it by {10.0 ** round(-math.log10(sd[j])):g}; log-densities shift by the log of the "
                             "factor) and fit again")
        if eps * abs(mean[j]) > 1e-2 * sd[j]:
            raise ValueError(f"standardize=True: column {j} of data has mean {mean[j]:.6g} and sd {sd[j]:.3g}: the "
                             f"flow's floating type (machine epsilon {eps:.3g}) resolves values there only to "
                             f"{eps * abs(mean[j]) / sd[j]:.2g} sd, so the returned flow could not hold its "
                             "standardisation. Fit a float64 flow (flow.double() in pyroflows; in numpyroflows, "
                             "with jax_enable_x64 on, one built with dtype=jnp.float64 or cast by "
                             "flow.astype(jnp.float64)), or subtract the offset from the column first")
    return _Standardization(mean, sd)


def _check_settings(lr: float, weight_decay: float, patience: int | None, custom_optimizer: bool,
                    callback: Any) -> None:
    """The checks of fit's settings that do not depend on the backend."""
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if patience is not None and int(patience) < 1:
        raise ValueError(f"patience must be a positive number of evaluations or None, got {patience}")
    if custom_optimizer and (lr != 1e-3 or weight_decay != 0.0):
        raise ValueError("lr= and weight_decay= configure fit's default Adam; with optimizer= set the learning rate "
                         "and weight decay in the optimizer you pass")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function (step, loss, flow) -> bool | None, got {type(callback).__name__}")


# ===================================================================================================== the loop
class _Trainer(Protocol):
    """What a backend supplies to :class:`_Loop`."""

    def train(self, idx: np.ndarray, record: Callable[[Sequence[float], int], None]) -> int | None:
        """Run one step per row of ``idx`` (row indices of a batch), reporting the losses to ``record``
        (:meth:`_Loop.record`); on a non-finite loss or gradient stop there, without applying that step, and return
        the step whose parameters are now held (see :class:`FitHistory`); ``None`` when every step ran."""

    def evaluate(self) -> float:
        """The validation NLL of the current parameters (in the trained, standardised space)."""

    def keep(self) -> None:
        """Remember the current parameters as the ones to return."""

    def flow(self) -> Any:
        """The flow as fit would return it now (for the callback)."""


class _Loop:
    """The backend-free control of one fit: the step counter, the losses (into the history, in data space: ``offset``
    is the standardisation's ``Σ log sd``), the best evaluation and patience, the callback, the progress bar and why
    the run stopped. :meth:`run` drives a backend's :class:`_Trainer` in chunks of ``every`` steps, each followed by
    an evaluation (with validation data) and the callback."""

    def __init__(self, total: int, every: int, patience: int | None, has_val: bool, progress: bool,
                 callback: Callable[[int, float, Any], bool | None] | None, offset: float = 0.0) -> None:
        from tqdm.auto import tqdm

        self.total, self.every, self.has_val, self.callback, self.offset = total, every, has_val, callback, offset
        self.patience = None if patience is None else int(patience)
        self.history = FitHistory()
        self.step, self.best, self.best_step, self.bad_evals, self.ema, self.stopped = 0, math.inf, 0, 0, None, ""
        self.bar = tqdm(total=total, disable=not progress, desc="fit", unit="step", leave=True)

    def record(self, losses: Sequence[float], applied: int) -> None:
        """The training losses of consecutive steps, of which the first ``applied`` were applied (a last one that
        was not is the non-finite value that stops the run)."""
        values = [float(v) + self.offset for v in losses]
        self.history.train_loss.extend(values)
        for v in values[:applied]:
            self.ema = v if self.ema is None else 0.98 * self.ema + 0.02 * v
        before, self.step = self.step, self.step + applied
        self.bar.update(applied)
        if self.step // 25 > before // 25:
            self._show()

    def run(self, trainer: _Trainer, stream: _Batches) -> None:
        """Evaluate at step 0, then train chunk by chunk until the budget, patience, the callback, a non-finite value
        or a KeyboardInterrupt stops it; the trainer then holds (via :meth:`_Trainer.keep`) the parameters to return."""
        start = time.perf_counter()
        try:
            if self.has_val:
                self._evaluate(trainer)
            while not self.stopped and self.step < self.total:
                first = len(self.history.train_loss)
                held = trainer.train(stream.next(min(self.every, self.total - self.step)), self.record)
                if held is not None:
                    self.stopped = "nan"
                    self._keep_last(trainer, held)
                    break
                if self.has_val:
                    self._evaluate(trainer)
                self._ask(trainer, first)
            if not self.stopped:
                self.stopped = "max_steps"
                self._keep_last(trainer, self.step)
        except KeyboardInterrupt:
            self.stopped = "interrupted"
            self._keep_last(trainer, self.step)
        finally:
            self.bar.close()
            self.history.seconds = time.perf_counter() - start
            self.history.num_steps = self.step

    def _evaluate(self, trainer: _Trainer) -> None:
        value = trainer.evaluate() + self.offset
        self.history.val_loss.append((self.step, value))
        if not math.isfinite(value):
            self.stopped = "nan"
            return
        if value < self.best:
            self.best, self.best_step, self.bad_evals = value, self.step, 0
            trainer.keep()
        else:
            self.bad_evals += 1
        self._show()
        if self.patience is not None and self.bad_evals >= self.patience:
            self.stopped = "early_stopping"

    def _ask(self, trainer: _Trainer, first: int) -> None:
        """Call the callback after a chunk (not after a non-finite evaluation) with the validation NLL, or without
        validation the mean training loss of the chunk; True stops the run."""
        if self.callback is None or self.stopped == "nan":
            return
        loss = self.history.val_loss[-1][1] if self.has_val else float(np.mean(self.history.train_loss[first:]))
        if self.callback(self.step, loss, trainer.flow()) and not self.stopped:
            self.stopped = "callback"

    def _keep_last(self, trainer: _Trainer, step: int) -> None:
        """Without validation the parameters to return are the trainer's current ones, after ``step`` updates."""
        if not self.has_val:
            self.best_step = step
            trainer.keep()

    def _show(self) -> None:
        post = {"loss": "-" if self.ema is None else f"{self.ema:.4g}"}
        if self.has_val:
            post["val"] = f"{self.history.val_loss[-1][1]:.4g}" if self.history.val_loss else "-"
        self.bar.set_postfix(post, refresh=False)

    def finish(self, lr: float | None) -> FitHistory:
        """The history, completed with the kept step, its validation loss, the reason and the message."""
        h = self.history
        h.best_step, h.stopped = self.best_step, self.stopped
        h.best_val_loss = self.best if self.has_val and math.isfinite(self.best) else None
        h.message = _outcome(self.stopped, self.step, self.best_step, h.best_val_loss, self.patience, lr)
        return h


def _outcome(stopped: str, step: int, best_step: int, best: float | None, patience: int | None,
             lr: float | None) -> str:
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
    if stopped == "callback":
        return f"stopped by the callback at step {step}; {kept}"
    rate = f"the learning rate (lr={lr:g})" if lr is not None else "the optimizer's learning rate"
    return (f"the loss or its gradient was not finite at step {step}: training stopped and {kept}. Lower {rate}, "
            "pass standardize=True for data far from unit scale, or check the data")
