"""Maximum-likelihood density estimation: :func:`fit` trains a flow on data with Adam, mini-batches and early stopping.

The loss is the mean negative log-likelihood of a mini-batch in nats per sample, ``-(1/B) Σ log p(x_b)``, in data space
(with ``standardize=True`` the returned flow contains the standardisation, so its ``log_prob`` is that of the data).
The same function, with the same keywords, defaults and batch order, exists in :mod:`numpyroflows.infer.fit`.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..flows.core import Flow
from ..transforms.base import chain_inverse
from ..transforms.linear import ActNorm, DiagonalAffine

Tensor = torch.Tensor
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
DEFAULT_MAX_STEPS = 1000
_INIT_ROWS = 4096  # rows used for data-dependent initialisation (ActNorm)
_EVAL_BATCH = 4096  # rows per batch when evaluating the validation loss


# ===================================================================================================== history
@dataclass
class FitHistory:
    """What :func:`fit` did: losses, the evaluation that was kept, and why it stopped.

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
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be a numeric array of shape (N, D) (a NumPy array or a tensor), got dtype "
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


# ===================================================================================================== torch parts
def _log_prob(flow: Flow, x: Tensor, context: Tensor | None) -> Tensor:
    """``flow(context).log_prob(x)`` without its per-call input checks (the data were checked once)."""
    z, ladj = chain_inverse(list(flow.transforms), x, context)
    if flow.base is not None:
        return flow.base.log_prob(z) + ladj
    return -0.5 * (z * z).sum(-1) - flow.input_dim * _HALF_LOG_2PI + ladj


def _inverse_affine_scale(scale: Tensor) -> Tensor:
    from .autoguide import _inverse_affine_scale as inv

    return inv(scale)


def _with_standardization(flow: Flow, mean: np.ndarray, sd: np.ndarray) -> Flow:
    """``Flow([*flow.transforms, affine], base=flow.base)`` with ``affine(y) = mean + sd ⊙ y`` (the same modules)."""
    dtype, device = _flow_dtype_device(flow)
    affine = DiagonalAffine(flow.input_dim).to(device=device, dtype=dtype)
    affine.head.set_value("shift", torch.as_tensor(mean, dtype=dtype, device=device))
    raw = _inverse_affine_scale(torch.as_tensor(sd, dtype=torch.float64))
    affine.head.set_value("raw_scale", raw.to(device=device, dtype=dtype))
    return Flow([*flow.transforms, affine], base=flow.base).to(device=device, dtype=dtype)


def _flow_dtype_device(flow: Flow) -> tuple[torch.dtype, torch.device]:
    ref = getattr(flow, "_ref", None)
    if ref is None:
        ref = next(iter(flow.parameters()))
    return ref.dtype, ref.device


def _mean_nll(flow: Flow, x: Tensor, c: Tensor | None) -> float:
    """Mean NLL over all rows, in batches, without gradients."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, x.shape[0], _EVAL_BATCH):
            cb = None if c is None else c[i:i + _EVAL_BATCH]
            total += float(-_log_prob(flow, x[i:i + _EVAL_BATCH], cb).sum())
    return total / x.shape[0]


def fit(
    flow: Flow,
    data: Any,
    *,
    context: Any = None,
    batch_size: int = 256,
    max_steps: int | None = None,
    epochs: int | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    clip_norm: float | None = 5.0,
    validation_fraction: float = 0.1,
    validation_data: Any = None,
    validation_context: Any = None,
    patience: int | None = 10,
    eval_every: int | None = None,
    dequantize: bool = False,
    standardize: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    seed: int = 0,
) -> tuple[Flow, FitHistory]:
    """Fit a flow to data by maximum likelihood: Adam on mini-batches, early stopping on a validation split.

    Minimises the mean negative log-likelihood ``-(1/B) Σ_b log p(x_b | c_b)`` (nats per sample) over shuffled
    mini-batches (a fresh seeded permutation per epoch; the last partial batch of each epoch is dropped, so every step
    sees ``batch_size`` rows), with Adam (AdamW with ``weight_decay > 0``) and gradient clipping by global norm. The
    validation NLL is evaluated at step 0 and every ``eval_every`` steps (and at the last step); the parameters with the
    lowest one are kept and restored at the end.

    Args:
        flow: a :class:`~pyroflows.Flow` (any recipe); trained in place.
        data: ``(N, input_dim)`` array or tensor.
        context: ``(N, context_dim)`` rows of context, required exactly when ``flow.context_dim > 0``.
        batch_size: rows per step (at most the number of training rows).
        max_steps: optimizer steps; or ``epochs`` (passes over the training rows). Neither: 1000 steps.
        lr: Adam's learning rate.
        weight_decay: decoupled weight decay (AdamW); not applied to the standardisation layer.
        clip_norm: clip the gradient to this global L2 norm (``None``: no clipping).
        validation_fraction: fraction of the rows held out (the last part of a seeded permutation) for early stopping;
            0 trains on every row, without early stopping, and keeps the final parameters. Ignored when
            ``validation_data`` is given.
        validation_data, validation_context: an explicit validation set (then every row of ``data`` is trained on).
        patience: evaluations without a lower validation NLL before stopping; ``None`` never stops early.
        eval_every: steps between evaluations; ``None``: once per epoch, clamped to 50..1000 steps
            (small data sets have one-step epochs, large ones very long ones).
        dequantize: integer-valued data (counts, pixels 0..255): fit the density of ``x + u``, ``u ~ U[0, 1)^D``, drawn
            afresh each step (the validation rows get one fixed draw). Its likelihood lower-bounds the discrete
            likelihood of ``x`` (Theis et al. 2016), and ``history.bits_per_dim = best_val_loss / (D ln 2)``. For
            pixels pass the raw integers (0..255) with ``standardize=True``: the figure is then the usual bits/dim.
        standardize: put a :class:`~pyroflows.transforms.linear.DiagonalAffine` ``x = mean + sd ⊙ y`` (training mean
            and sd per column, of ``x + u`` with dequantization) at the data end of the flow, so the inner transforms
            see standardised data while ``log_prob`` stays in data space. The returned flow is then a new
            ``Flow([*flow.transforms, affine], base=flow.base)`` holding the *same* transform modules (trained in
            place): use the returned flow. The affine is trained with the rest (the statistics are its start).
        device: where to train (``None``: where the flow is); the flow is moved there and the data copied there once.
        progress: show a tqdm bar with the running (exponential average) training loss and the last validation loss.
        seed: seeds the split, the batch order and the dequantization noise (the global torch RNG is not used).

    Returns:
        ``(flow, history)``: the fitted flow, holding the best parameters, and a :class:`FitHistory`.

    A non-finite loss or gradient stops training at once (the failing step is not applied), restores the best
    parameters (without validation: the last ones with a finite training loss) and warns. ``ActNorm`` layers not yet
    initialised are initialised on up to 4096 shuffled training rows before the first step (not on validation rows).
    The module's train/eval mode is left as it is (no pyroflows layer depends on it); no graph is retained between
    steps, and the Pyro parameter store is not used.

    Example:
        >>> flow, history = fit(flows.MAF(input_dim=2), x, max_steps=2000)
        >>> history.best_val_loss, flow().log_prob(x_test).mean()

    References: Papamakarios et al. (2021), "Normalizing flows for probabilistic modeling and inference" (§2.3,
    maximum likelihood); Theis et al. (2016), "A note on the evaluation of generative models" (dequantization).
    """
    if not isinstance(flow, Flow):
        raise TypeError(f"fit takes a pyroflows Flow (e.g. pyroflows.flows.MAF(input_dim=2)), got "
                        f"{type(flow).__name__}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if patience is not None and int(patience) < 1:
        raise ValueError(f"patience must be a positive number of evaluations or None, got {patience}")
    if not any(p.requires_grad for p in flow.parameters()):
        raise ValueError("the flow has no trainable parameters (requires_grad=True): there is nothing to fit")
    split = _prepare(flow, data, context, validation_fraction, validation_data, validation_context, dequantize, seed)
    n_train = split.x_train.shape[0]
    batch, _, total, every = _budget(n_train, batch_size, max_steps, epochs, eval_every)
    has_val = split.x_val is not None

    # ------------------------------------------------------------------------------------------- flow and data
    if device is not None:
        flow.to(device)
    if standardize:
        flow = _with_standardization(flow, *_standardize_stats(split.x_train, dequantize))
    dtype, dev = _flow_dtype_device(flow)

    def tensor(a: np.ndarray | None) -> Tensor | None:
        return None if a is None else torch.as_tensor(a, dtype=dtype, device=dev)

    x_train, c_train = tensor(split.x_train), tensor(split.c_train)
    x_val, c_val = tensor(split.x_val), tensor(split.c_val)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    if dequantize and has_val:
        x_val = x_val + torch.rand(x_val.shape, generator=gen, device=dev, dtype=dtype)
    stream = _Batches(split.rng, n_train, batch)

    if any(isinstance(m, ActNorm) and not bool(m.initialized) for m in flow.modules()):
        rows = torch.as_tensor(split.rng.permutation(n_train)[:_INIT_ROWS], device=dev)
        x0 = x_train[rows] + (torch.rand((len(rows), flow.input_dim), generator=gen, device=dev, dtype=dtype)
                              if dequantize else 0.0)
        with torch.no_grad():
            _log_prob(flow, x0, None if c_train is None else c_train[rows])

    # ------------------------------------------------------------------------------------------- optimizer
    no_decay = {id(p) for p in flow.transforms[-1].parameters()} if standardize else set()
    params = [p for p in flow.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in no_decay]},
              {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    opt = (torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay) if weight_decay
           else torch.optim.Adam(groups, lr=lr))
    last_good = [p.detach().clone() for p in params] if not has_val else None

    # ------------------------------------------------------------------------------------------- loop
    from tqdm.auto import tqdm

    history = FitHistory()
    best_state: dict[str, Tensor] | None = None
    best, best_step, bad_evals, step, ema = math.inf, 0, 0, 0, None
    stopped = ""
    bar = tqdm(total=total, disable=not progress, desc="fit", unit="step", leave=True)

    def evaluate() -> bool:
        """Evaluate the validation loss after ``step`` updates; False when it is not finite."""
        nonlocal best, best_step, best_state, bad_evals
        value = _mean_nll(flow, x_val, c_val)
        history.val_loss.append((step, value))
        if not math.isfinite(value):
            return False
        if value < best:
            best, best_step, bad_evals = value, step, 0
            best_state = copy.deepcopy(flow.state_dict())
        else:
            bad_evals += 1
        bar.set_postfix(loss=f"{ema:.4g}" if ema is not None else "-", val=f"{value:.4g}", refresh=False)
        return True

    start = time.perf_counter()
    try:
        if has_val and not evaluate():
            stopped = "nan"
        while not stopped and step < total:
            chunk = torch.as_tensor(stream.next(min(every, total - step)), device=dev)
            for idx in chunk:
                xb = x_train[idx]
                if dequantize:
                    xb = xb + torch.rand(xb.shape, generator=gen, device=dev, dtype=dtype)
                loss = -_log_prob(flow, xb, None if c_train is None else c_train[idx]).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                with_grad = [p for p in params if p.grad is not None]
                grads = [p.grad for p in with_grad]
                norm = torch.nn.utils.get_total_norm(grads) if grads else loss.new_zeros(())
                value, norm_value = torch.stack([loss.detach(), norm.detach().to(loss.dtype)]).tolist()
                history.train_loss.append(value)
                if not (math.isfinite(value) and math.isfinite(norm_value)):
                    stopped = "nan"
                    if last_good is not None:  # no validation: keep the last parameters with a finite loss
                        best_step = step
                        if not math.isfinite(value):
                            with torch.no_grad():
                                for p, saved in zip(params, last_good):
                                    p.copy_(saved)
                            best_step = max(step - 1, 0)
                    break
                if last_good is not None:
                    with torch.no_grad():
                        for saved, p in zip(last_good, params):
                            saved.copy_(p)
                if clip_norm is not None and grads:
                    torch.nn.utils.clip_grads_with_norm_(with_grad, clip_norm, norm)
                opt.step()
                step += 1
                ema = value if ema is None else 0.98 * ema + 0.02 * value
                bar.update(1)
                if step % 25 == 0:
                    bar.set_postfix(loss=f"{ema:.4g}",
                                    val=f"{history.val_loss[-1][1]:.4g}" if history.val_loss else "-", refresh=False)
            if stopped:
                break
            if has_val:
                if not evaluate():
                    stopped = "nan"
                elif patience is not None and bad_evals >= int(patience):
                    stopped = "early_stopping"
        if not stopped:
            stopped = "max_steps"
            if not has_val:
                best_step = step
    except KeyboardInterrupt:
        stopped = "interrupted"
        if not has_val:
            best_step = step
    finally:
        bar.close()
    history.seconds = time.perf_counter() - start
    history.num_steps = step

    # ------------------------------------------------------------------------------------------- outcome
    if best_state is not None:
        flow.load_state_dict(best_state)
    history.best_step = best_step
    history.best_val_loss = best if has_val and math.isfinite(best) else None
    history.stopped = stopped
    history.message = _outcome(stopped, step, best_step, history.best_val_loss, patience, lr)
    if stopped == "nan":
        warnings.warn(f"pyroflows.fit: {history.message}", RuntimeWarning, stacklevel=2)
    if dequantize:
        nll = history.best_val_loss
        if not has_val:
            noisy = x_train + torch.rand(x_train.shape, generator=gen, device=dev, dtype=dtype)
            nll = _mean_nll(flow, noisy, c_train)
        history.bits_per_dim = None if nll is None else nll / (flow.input_dim * math.log(2))
    return flow, history


__all__ = ["FitHistory", "fit"]
