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
from typing import Any

import numpy as np
import torch

from flowcommon.fit import (
    _EVAL_BATCH,
    _INIT_ROWS,
    FitHistory,
    _Batches,
    _budget,
    _outcome,
    _prepare,
    _standardize_stats,
)

from ..flows.core import Flow, base_log_prob
from ..functional.affine import affine_scale_inverse
from ..transforms.base import chain_inverse
from ..transforms.linear import ActNorm, DiagonalAffine

Tensor = torch.Tensor

# ===================================================================================================== torch parts
def _log_prob(flow: Flow, x: Tensor, context: Tensor | None) -> Tensor:
    """``flow(context).log_prob(x)`` without its per-call input checks (the data were checked once)."""
    z, ladj = chain_inverse(list(flow.transforms), x, context)
    return base_log_prob(flow, z) + ladj


def _with_standardization(flow: Flow, mean: np.ndarray, sd: np.ndarray) -> Flow:
    """``Flow([*flow.transforms, affine], base=flow.base)`` with ``affine(y) = mean + sd ⊙ y`` (the same modules)."""
    dtype, device = _flow_dtype_device(flow)
    affine = DiagonalAffine(flow.input_dim).to(device=device, dtype=dtype)
    affine.head.set_value("shift", torch.as_tensor(mean, dtype=dtype, device=device))
    raw = affine_scale_inverse(torch.as_tensor(sd, dtype=torch.float64))
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

    The start: the recipes begin at their base distribution (conditioners' ``output_init=1e-3``). For maximum
    likelihood that is also the better start for spline flows (NSF); ``output_init="fan_in"`` (random output weights,
    as in zuko and FlowJAX) helped the affine MAF on the rings toy by 0.03 nats (``benchmarks/RESULTS.md``,
    "the conditioners' start").

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
