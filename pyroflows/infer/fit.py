"""Maximum-likelihood density estimation: :func:`fit` trains a flow on data with Adam, mini-batches and early stopping.

The loss is the mean negative log-likelihood of a mini-batch in nats per sample, ``-(1/B) Σ log p(x_b)``, in data space
(with ``standardize=True`` the returned flow contains the standardisation, so its ``log_prob`` is that of the data).
The same function, with the same keywords, defaults and batch order, exists in :mod:`numpyroflows.infer.fit`; the
backend-free half (data checks, split, batch order, standardisation, the loop's control) is :mod:`flowcommon.fit`.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from flowcommon.fit import (
    _EVAL_BATCH,
    _INIT_ROWS,
    FitHistory,
    _Batches,
    _budget,
    _check_settings,
    _Loop,
    _prepare,
    _Split,
    _standardize_stats,
)

from ..flows.core import Flow, base_log_prob
from ..functional.affine import MIN_SCALE, affine_scale
from ..transforms.base import chain_inverse
from ..transforms.linear import DiagonalAffine

Tensor = torch.Tensor
OptimizerFactory = Callable[[list[dict]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


# ===================================================================================================== torch parts
def _log_prob(flow: Flow, x: Tensor, context: Tensor | None) -> Tensor:
    """``flow(context).log_prob(x)`` without its per-call input checks (the data were checked once)."""
    z, ladj = chain_inverse(list(flow.transforms), x, context)
    return base_log_prob(flow, z) + ladj


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


class _Trainer:
    """One torch fit: the flow being trained (with standardisation, the flow plus a :class:`DiagonalAffine` at the
    identity, trained on the data standardised in float64), its data on the device, the optimizer; the training steps,
    the evaluation, and keeping and restoring the parameters to return (the backend half of :class:`_Loop`)."""

    def __init__(self, flow: Flow, split: _Split, standardize: bool, dequantize: bool, clip_norm: float | None,
                 seed: int) -> None:
        self.dtype, self.dev = _flow_dtype_device(flow)
        self.std = (_standardize_stats(split.x_train, dequantize, torch.finfo(self.dtype).eps, MIN_SCALE)
                    if standardize else None)
        self.model = flow if self.std is None else Flow(
            [*flow.transforms, DiagonalAffine(flow.input_dim)], base=flow.base).to(device=self.dev, dtype=self.dtype)
        self.offset = 0.0 if self.std is None else self.std.log_det
        scaled = (lambda a: a) if self.std is None else self.std.apply
        self.x, self.c = self._tensor(scaled(split.x_train)), self._tensor(split.c_train)
        self.x_val, self.c_val = self._tensor(scaled(split.x_val)), self._tensor(split.c_val)
        self.inv_sd = None if self.std is None else self._tensor(1.0 / self.std.sd)
        self.dequantize, self.clip_norm, self.steps, self.best_state = dequantize, clip_norm, 0, None
        self.gen = torch.Generator(device=self.dev).manual_seed(int(seed))
        if dequantize and self.x_val is not None:  # one fixed draw for the validation rows
            self.x_val = self.x_val + self._noise(self.x_val.shape)

    def _tensor(self, a: np.ndarray | None) -> Tensor | None:
        return None if a is None else torch.as_tensor(a, dtype=self.dtype, device=self.dev)

    def _noise(self, shape: torch.Size) -> Tensor:
        """Dequantization noise ``u ~ U[0, 1)`` (divided by the sd where the data are standardised)."""
        u = torch.rand(shape, generator=self.gen, device=self.dev, dtype=self.dtype)
        return u if self.inv_sd is None else u * self.inv_sd

    def initialize(self, rng: np.random.Generator) -> None:
        """Data-dependent initialisation (:meth:`Flow.initialize`, ActNorm) on up to 4096 shuffled training rows."""
        if self.model.requires_initialization:
            rows = torch.as_tensor(rng.permutation(self.x.shape[0])[:_INIT_ROWS], device=self.dev)
            x0 = self.x[rows] + self._noise((len(rows), self.x.shape[1])) if self.dequantize else self.x[rows]
            self.model.initialize(x0, None if self.c is None else self.c[rows])

    def optimize(self, optimizer: OptimizerFactory | None, scheduler: SchedulerFactory | None, lr: float,
                 weight_decay: float) -> None:
        """The optimizer (Adam, AdamW with weight decay, or ``optimizer(groups)``) over two parameter groups, the
        standardisation layer's with ``weight_decay=0``; and the scheduler, if any."""
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        spare = {id(p) for p in self.model.transforms[-1].parameters()} if self.std is not None else set()
        groups = [{"params": [p for p in self.params if id(p) not in spare]},
                  {"params": [p for p in self.params if id(p) in spare], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        if optimizer is None:
            self.opt = (torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay) if weight_decay
                        else torch.optim.Adam(groups, lr=lr))
        else:
            self.opt = optimizer(groups)
            if not isinstance(self.opt, torch.optim.Optimizer):
                raise TypeError("optimizer must be a factory params -> torch.optim.Optimizer, e.g. lambda params: "
                                f"torch.optim.AdamW(params, lr=1e-3); it returned {type(self.opt).__name__}")
        self.sched = None if scheduler is None else scheduler(self.opt)
        self.plateau = isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
        self.last_good = [p.detach().clone() for p in self.params] if self.x_val is None else None

    def _step(self, idx: Tensor) -> tuple[float, bool]:
        """One optimizer step on the training rows ``idx``: its loss, and whether it was applied (not when the loss
        or the gradient norm is not finite)."""
        xb = self.x[idx] + self._noise((len(idx), self.x.shape[1])) if self.dequantize else self.x[idx]
        loss = -_log_prob(self.model, xb, None if self.c is None else self.c[idx]).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        with_grad = [p for p in self.params if p.grad is not None]
        grads = [p.grad for p in with_grad]
        norm = torch.nn.utils.get_total_norm(grads) if grads else loss.new_zeros(())
        value, norm_value = torch.stack([loss.detach(), norm.detach().to(loss.dtype)]).tolist()
        if not (math.isfinite(value) and math.isfinite(norm_value)):
            return value, False
        if self.last_good is not None:  # the parameters that gave this finite loss
            with torch.no_grad():
                for saved, p in zip(self.last_good, self.params):
                    saved.copy_(p)
        if self.clip_norm is not None and grads:
            torch.nn.utils.clip_grads_with_norm_(with_grad, self.clip_norm, norm)
        self.opt.step()
        if self.sched is not None and not self.plateau:
            self.sched.step()
        self.steps += 1
        return value, True

    def train(self, idx: np.ndarray, record: Callable[[list[float], int], None]) -> int | None:
        """The steps on the batches ``idx`` (one row of indices each), each reported to ``record``; see
        :meth:`flowcommon.fit._Trainer.train`."""
        losses = []
        for rows in torch.as_tensor(idx, device=self.dev):
            value, applied = self._step(rows)
            record([value], int(applied))
            if not applied:
                return self._failed(value)
            losses.append(value)
        if self.plateau and self.x_val is None:
            self.sched.step(float(np.mean(losses)) + self.offset)
        return None

    def _failed(self, value: float) -> int:
        """After a non-finite step: without validation, the last parameters whose training loss was finite (those
        before the failing step, or before the previous one if the loss itself was not finite); their step."""
        if self.last_good is None or math.isfinite(value):
            return self.steps
        with torch.no_grad():
            for p, saved in zip(self.params, self.last_good):
                p.copy_(saved)
        return max(self.steps - 1, 0)

    def evaluate(self) -> float:
        value = _mean_nll(self.model, self.x_val, self.c_val)
        if self.plateau and math.isfinite(value):
            self.sched.step(value + self.offset)
        return value

    def keep(self) -> None:
        self.best_state = copy.deepcopy(self.model.state_dict())

    def flow(self) -> Flow:
        """The flow as fit returns it: with standardisation, ``Flow([*flow.transforms, affine])`` whose affine is the
        standardisation composed (float64) with the trained one, ``x = loc + s ⊙ u``."""
        if self.std is None:
            return self.model
        *inner, trained = self.model.transforms
        with torch.no_grad():
            shift = trained.head.shift.double().cpu().numpy()
            scale = affine_scale(trained.head.raw_scale).double().cpu().numpy()
        loc, s = self.std.compose(shift, scale, MIN_SCALE)
        # the start, computed in float64, is exact in a float64 flow (lists: the configuration is saved as JSON)
        affine = DiagonalAffine(self.model.input_dim, loc=loc.tolist(), scale=s.tolist(), dtype=self.dtype)
        return Flow([*inner, affine], base=self.model.base).to(device=self.dev, dtype=self.dtype)

    def result(self) -> Flow:
        """The kept parameters restored, as :meth:`flow`."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return self.flow()

    def bits_per_dim(self, best_val_loss: float | None) -> float | None:
        """``best_val_loss / (D ln 2)``; without validation the NLL of the training rows with one noise draw."""
        nll = best_val_loss
        if self.x_val is None:
            nll = _mean_nll(self.model, self.x + self._noise(self.x.shape), self.c) + self.offset
        return None if nll is None else nll / (self.model.input_dim * math.log(2))


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
    optimizer: OptimizerFactory | None = None,
    scheduler: SchedulerFactory | None = None,
    callback: Callable[[int, float, Flow], bool | None] | None = None,
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
        data: ``(N, input_dim)`` array, tensor or nested list; converted to the flow's dtype (integer-valued data
            without ``dequantize`` draw a warning).
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
        standardize: standardise each column in float64, ``y = (x - mean) / sd`` (training mean and sd, of ``x + u``
            with dequantization), and train the flow followed by a :class:`~pyroflows.transforms.linear.DiagonalAffine`
            (starting at the identity) on ``y``. The returned flow is a new ``Flow([*flow.transforms, affine],
            base=flow.base)`` holding the *same* transform modules (trained in place) and an affine in data space,
            ``x = loc + s ⊙ u``, composed in float64 from the standardisation and the trained affine, so its
            ``log_prob`` is that of the data: use the returned flow. Refused, naming the fix: a constant column, a
            column whose sd is at or below the affine's floor 1e-3, or whose offset the flow's dtype cannot resolve
            against its sd (fit a float64 flow).
        optimizer: a factory ``params -> torch.optim.Optimizer`` replacing Adam, e.g. ``lambda params:
            torch.optim.AdamW(params, lr=3e-4)``; it receives parameter groups (the standardisation layer's with
            ``weight_decay=0``). Set the learning rate and weight decay there (then ``lr``/``weight_decay`` stay at
            their defaults). Gradient clipping still applies.
        scheduler: a factory ``optimizer -> torch.optim.lr_scheduler.LRScheduler``, e.g. ``lambda opt:
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2000)``, stepped after every optimizer step;
            ``ReduceLROnPlateau`` is stepped after every evaluation with the validation NLL (without validation, with
            the mean training loss of each ``eval_every`` steps).
        callback: ``callback(step, loss, flow) -> bool | None``, called every ``eval_every`` steps (after the
            evaluation) with the number of updates so far, the validation NLL (without validation: the mean training
            loss of those steps) and the flow as it would be returned now; returning True stops training
            (``history.stopped == "callback"``, the best parameters are restored as for early stopping).
        device: where to train (``None``: where the flow is); the flow is moved there and the data copied there once.
        progress: show a tqdm bar with the running (exponential average) training loss and the last validation loss.
        seed: seeds the split, the batch order and the dequantization noise (the global torch RNG is not used).

    Returns:
        ``(flow, history)``: the fitted flow, holding the best parameters, and a :class:`FitHistory`.

    A non-finite loss or gradient stops training at once (the failing step is not applied), restores the best
    parameters (without validation: the last ones with a finite training loss) and warns. Transforms with a
    data-dependent initialisation not yet run (``ActNorm``) are initialised by :meth:`~pyroflows.flows.Flow.initialize`
    on up to 4096 shuffled training rows before the first step (not on validation rows). The module's train/eval mode
    is left as it is (no pyroflows layer depends on it); no graph is retained between steps, and the Pyro parameter
    store is not used.

    The start: the recipes begin at their base distribution (conditioners' ``output_init=1e-3``); for maximum
    likelihood that is also the better start for spline flows (NSF), while ``output_init="fan_in"`` (random output
    weights, as in zuko and FlowJAX) can suit the affine MAF.

    Example:
        >>> flow, history = fit(flows.MAF(input_dim=2), x, max_steps=2000)
        >>> history.best_val_loss, flow().log_prob(x_test).mean()
        >>> flow, history = fit(flows.NSF(input_dim=2), x, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-4),
        ...                     callback=lambda step, loss, flow: loss < -1.0)

    References: Papamakarios et al. (2021), "Normalizing flows for probabilistic modeling and inference" (§2.3,
    maximum likelihood); Theis et al. (2016), "A note on the evaluation of generative models" (dequantization).
    """
    if not isinstance(flow, Flow):
        raise TypeError(f"fit takes a pyroflows Flow (e.g. pyroflows.flows.MAF(input_dim=2)), got "
                        f"{type(flow).__name__}")
    _check_settings(lr, weight_decay, patience, optimizer is not None, callback)
    for name, f in (("optimizer", optimizer), ("scheduler", scheduler)):
        if f is not None and (not callable(f) or isinstance(f, torch.optim.Optimizer)):
            raise TypeError(f"{name} must be a factory (a function), e.g. "
                            + ("lambda params: torch.optim.AdamW(params, lr=1e-3)" if name == "optimizer" else
                               "lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)")
                            + f"; got {type(f).__name__}")
    if not any(p.requires_grad for p in flow.parameters()):
        raise ValueError("the flow has no trainable parameters (requires_grad=True): there is nothing to fit")
    split = _prepare(flow, data, context, validation_fraction, validation_data, validation_context, dequantize, seed)
    batch, _, total, every = _budget(split.x_train.shape[0], batch_size, max_steps, epochs, eval_every)
    if device is not None:
        flow.to(device)
    trainer = _Trainer(flow, split, standardize, dequantize, clip_norm, seed)
    trainer.initialize(split.rng)
    trainer.optimize(optimizer, scheduler, lr, weight_decay)
    loop = _Loop(total, every, patience, split.x_val is not None, progress, callback, trainer.offset)
    loop.run(trainer, _Batches(split.rng, split.x_train.shape[0], batch))
    flow = trainer.result()
    history = loop.finish(lr if optimizer is None and scheduler is None else None)
    if history.stopped == "nan":
        warnings.warn(f"pyroflows.fit: {history.message}", RuntimeWarning, stacklevel=2)
    if dequantize:
        history.bits_per_dim = trainer.bits_per_dim(history.best_val_loss)
    return flow, history


__all__ = ["FitHistory", "fit"]
