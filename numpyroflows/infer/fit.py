"""Maximum-likelihood density estimation in JAX: :func:`fit` trains a flow on data with Adam, mini-batches and early
stopping (the mirror of :mod:`pyroflows.infer.fit`: same keywords, defaults, split and batch order).

Training runs in jitted chunks: one compiled ``lax.while_loop`` performs up to ``eval_every`` optimizer steps on
batches gathered on the device (from a table of pre-permuted row indices), and one compiled function evaluates the
validation loss. Shapes are fixed (every batch has ``batch_size`` rows; the training rows on the device and the
validation batches are padded to a power of two, the padding never sampled or weighted 0), so a fit compiles each
function once, and later fits of a flow with the same structure on data of similar size reuse them.
"""

from __future__ import annotations

import math
import time
import warnings
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

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

from ..flows.core import Flow
from ..functional.affine import affine_scale_inverse
from ..transforms.linear import _BUFFERS, ActNorm, DiagonalAffine, initialize_flow

Array = jax.Array

# ===================================================================================================== JAX parts
def _flow_dtype(flow: Flow) -> Any:
    for v in flow.params.values():
        if jnp.issubdtype(v.dtype, jnp.floating):
            return v.dtype
    return jnp.result_type(float)


def _with_standardization(flow: Flow, mean: np.ndarray, sd: np.ndarray) -> Flow:
    """``Flow([*flow.transforms, affine], base=flow.base)`` with ``affine(y) = mean + sd ⊙ y``."""
    dtype = _flow_dtype(flow)
    affine = DiagonalAffine(flow.input_dim)
    raw = affine_scale_inverse(jnp.asarray(sd, dtype))
    affine = affine.with_params({"head.shift": jnp.asarray(mean, dtype), "head.raw_scale": raw.astype(dtype)})
    return Flow([*flow.transforms, affine], base=flow.base)


def _optimizer(hyper: dict[str, Array], decay: tuple[bool, ...], names: tuple[str, ...]) -> Any:
    """Adam with decoupled weight decay (AdamW; ``weight_decay = 0`` is Adam) on the parameters marked in ``decay``,
    the same update as ``torch.optim.AdamW``/``Adam``."""
    mask = dict(zip(names, decay))
    return optax.adamw(hyper["lr"], b1=0.9, b2=0.999, eps=1e-8, weight_decay=hyper["weight_decay"], mask=mask)


def _nll(params: dict[str, Array], flow: Flow, x: Array, c: Array | None) -> Array:
    return -jnp.mean(flow.with_params(params)(c).log_prob(x))


@partial(jax.jit, static_argnames=("decay", "dequantize", "clip", "track"))
def _train_chunk(flow: Flow, params: dict, opt_state: Any, last_good: dict | None, x: Array, c: Array | None,
                 idx: Array, n: Array, step0: Array, key: Array, hyper: dict, *, decay: tuple[bool, ...],
                 dequantize: bool, clip: bool, track: bool) -> tuple:
    """Up to ``n`` optimizer steps on the batches ``x[idx[i]]``; stops at the first non-finite loss or gradient
    without applying that step. Returns the new state, the number of steps run (the failing one included), whether
    all were finite, and the losses (``idx.shape[0]`` slots)."""
    names = tuple(sorted(params))
    opt = _optimizer(hyper, decay, names)

    def cond(state):
        i, ok = state[0], state[4]
        return (i < n) & ok

    def body(state):
        i, params, opt_state, last_good, _, losses = state
        rows = idx[i]
        xb = x[rows]
        if dequantize:
            xb = xb + jax.random.uniform(jax.random.fold_in(key, step0 + i), xb.shape, xb.dtype)
        cb = None if c is None else c[rows]
        loss, grads = jax.value_and_grad(_nll)(params, flow, xb, cb)
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        finite = jnp.isfinite(loss) & jnp.isfinite(norm)
        if clip:  # as torch.nn.utils.clip_grad_norm_
            factor = jnp.minimum(1.0, hyper["clip_norm"] / (norm + 1e-6)).astype(norm.dtype)
            grads = jax.tree.map(lambda g: g * factor.astype(g.dtype), grads)
        updates, new_state = opt.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)

        def pick(flag, a, b):
            return jax.tree.map(lambda u, v: jnp.where(flag, u, v), a, b)

        if track:
            last_good = pick(jnp.isfinite(loss), params, last_good)
        params = pick(finite, new_params, params)
        opt_state = pick(finite, new_state, opt_state)
        losses = losses.at[i].set(loss.astype(losses.dtype))
        return i + 1, params, opt_state, last_good, finite, losses

    losses = jnp.zeros(idx.shape[0], x.dtype)
    state = (jnp.zeros((), jnp.int32), params, opt_state, last_good, jnp.array(True), losses)
    i, params, opt_state, last_good, ok, losses = lax.while_loop(cond, body, state)
    return params, opt_state, last_good, i, ok, losses


@jax.jit
def _mean_nll(flow: Flow, params: dict, xs: Array, cs: Array | None, ws: Array) -> Array:
    """Weighted mean NLL over batches ``xs`` ``(nb, B, D)`` (zero-weight rows are padding)."""
    f = flow.with_params(params)

    def one(total, batch):
        xb, cb, wb = batch
        nll = -f(cb).log_prob(xb)
        return total + jnp.sum(jnp.where(wb > 0, nll * wb, 0.0)), None

    total, _ = lax.scan(one, jnp.zeros((), xs.dtype), (xs, cs, ws))
    return total / jnp.sum(ws)


def _batched(x: np.ndarray, c: np.ndarray | None, dtype: Any, device: Any) -> tuple:
    """Rows padded (with copies of row 0, weight 0) to whole batches of a power-of-two size (at most
    ``_EVAL_BATCH``): ``(nb, B, ·)`` arrays and weights."""
    n = x.shape[0]
    b = min(_bucket(n), _EVAL_BATCH)
    nb = -(-n // b)
    pad = nb * b - n
    w = np.concatenate([np.ones(n), np.zeros(pad)])

    def shape(a: np.ndarray) -> Array:
        a = np.concatenate([a, np.repeat(a[:1], pad, axis=0)]).reshape(nb, b, -1)
        return _put(jnp.asarray(a, dtype), device)

    return shape(x), None if c is None else shape(c), _put(jnp.asarray(w.reshape(nb, b), dtype), device)


def _bucket(n: int) -> int:
    """``n`` rounded up to a power of two: data sets of similar size share compiled code."""
    return 1 << max(int(n) - 1, 0).bit_length()


def _pad_rows(a: np.ndarray) -> np.ndarray:
    """``a`` with zero rows appended up to :func:`_bucket` rows (the batches never index them)."""
    return np.concatenate([a, np.zeros((_bucket(a.shape[0]) - a.shape[0],) + a.shape[1:], a.dtype)])


def _put(a: Any, device: Any) -> Any:
    return a if device is None else jax.device_put(a, device)


def _resolve_device(device: Any) -> Any:
    if device is None or not isinstance(device, str):
        return device
    try:
        return jax.devices(device)[0]
    except RuntimeError as err:
        raise ValueError(f"device={device!r} is not available ({err}); pass None for JAX's default device or one of "
                         f"{jax.devices()}") from None


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
    device: Any = None,
    progress: bool = True,
    seed: int = 0,
) -> tuple[Flow, FitHistory]:
    """Fit a flow to data by maximum likelihood: Adam on mini-batches, early stopping on a validation split, jitted.

    Minimises the mean negative log-likelihood ``-(1/B) Σ_b log p(x_b | c_b)`` (nats per sample) over shuffled
    mini-batches (a fresh seeded permutation per epoch; the last partial batch of each epoch is dropped, so every step
    sees ``batch_size`` rows and nothing recompiles), with Adam (AdamW with ``weight_decay > 0``, as torch's) and
    gradient clipping by global norm. The validation NLL is evaluated at step 0 and every ``eval_every`` steps (and at
    the last step); the parameters with the lowest one are returned. The split and the batch order are those of
    :func:`pyroflows.fit` with the same ``seed``.

    Args:
        flow: a :class:`~numpyroflows.Flow` (any recipe). JAX values are immutable: use the returned flow.
        data: ``(N, input_dim)`` array.
        context: ``(N, context_dim)`` rows of context, required exactly when ``flow.context_dim > 0``.
        batch_size: rows per step (at most the number of training rows).
        max_steps: optimizer steps; or ``epochs`` (passes over the training rows). Neither: 1000 steps.
        lr: Adam's learning rate.
        weight_decay: decoupled weight decay (AdamW); not applied to the standardisation layer nor to the integer
            buffers (permutations, ActNorm's flag) that numpyroflows keeps among the parameters.
        clip_norm: clip the gradient to this global L2 norm (``None``: no clipping).
        validation_fraction: fraction of the rows held out (the last part of a seeded permutation) for early stopping;
            0 trains on every row, without early stopping, and keeps the final parameters. Ignored when
            ``validation_data`` is given.
        validation_data, validation_context: an explicit validation set (then every row of ``data`` is trained on).
        patience: evaluations without a lower validation NLL before stopping; ``None`` never stops early.
        eval_every: steps between evaluations (also the length of one compiled training chunk); ``None``: once per
            epoch, clamped to 50..1000 steps (small data sets have one-step epochs, large ones very long ones).
        dequantize: integer-valued data (counts, pixels 0..255): fit the density of ``x + u``, ``u ~ U[0, 1)^D``, drawn
            afresh each step (the validation rows get one fixed draw). Its likelihood lower-bounds the discrete
            likelihood of ``x`` (Theis et al. 2016), and ``history.bits_per_dim = best_val_loss / (D ln 2)``. For
            pixels pass the raw integers (0..255) with ``standardize=True``: the figure is then the usual bits/dim.
        standardize: put a :class:`~numpyroflows.transforms.linear.DiagonalAffine` ``x = mean + sd ⊙ y`` (training
            mean and sd per column, of ``x + u`` with dequantization) at the data end of the flow, so the inner
            transforms see standardised data while ``log_prob`` stays in data space; the returned flow is
            ``Flow([*flow.transforms, affine], base=flow.base)``. The affine is trained with the rest (the statistics
            are its start).
        device: a ``jax.Device`` or a platform name (``"cpu"``, ``"gpu"``) to train on; ``None``: JAX's default.
        progress: show a tqdm bar with the running (exponential average) training loss and the last validation loss.
        seed: seeds the split and batch order (NumPy, as pyroflows) and the dequantization noise (``PRNGKey(seed)``).

    Returns:
        ``(flow, history)``: the fitted flow, holding the best parameters, and a :class:`FitHistory`.

    A non-finite loss or gradient stops training at once (the failing step is not applied), returns the best
    parameters (without validation: the last ones with a finite training loss) and warns. ``ActNorm`` layers not yet
    initialised are initialised (:func:`~numpyroflows.transforms.initialize_flow`) on up to 4096 shuffled training
    rows before the first step.

    The start: the recipes begin at their base distribution (conditioners' ``output_init=1e-3``). For maximum
    likelihood that is also the better start for spline flows (NSF); ``output_init="fan_in"`` (random output weights,
    as in zuko and FlowJAX) helped the affine MAF on the rings toy by 0.03 nats (``benchmarks/RESULTS.md``,
    "the conditioners' start").

    Example:
        >>> flow = flows.MAF(input_dim=2, key=jax.random.PRNGKey(0))
        >>> flow, history = fit(flow, x, max_steps=2000)
        >>> history.best_val_loss, flow().log_prob(x_test).mean()

    References: Papamakarios et al. (2021), "Normalizing flows for probabilistic modeling and inference" (§2.3,
    maximum likelihood); Theis et al. (2016), "A note on the evaluation of generative models" (dequantization).
    """
    if not isinstance(flow, Flow):
        raise TypeError(f"fit takes a numpyroflows Flow (e.g. numpyroflows.flows.MAF(input_dim=2)), got "
                        f"{type(flow).__name__}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if patience is not None and int(patience) < 1:
        raise ValueError(f"patience must be a positive number of evaluations or None, got {patience}")
    if not any(k.rsplit(".", 1)[-1] not in _BUFFERS for k in flow.params):
        raise ValueError("the flow has no trainable parameters (only fixed permutations): there is nothing to fit")
    split = _prepare(flow, data, context, validation_fraction, validation_data, validation_context, dequantize, seed)
    n_train = split.x_train.shape[0]
    batch, _, total, every = _budget(n_train, batch_size, max_steps, epochs, eval_every)
    has_val = split.x_val is not None
    dev = _resolve_device(device)

    # ------------------------------------------------------------------------------------------- flow and data
    if standardize:
        flow = _with_standardization(flow, *_standardize_stats(split.x_train, dequantize))
    dtype = _flow_dtype(flow)
    key_val, key_init, key_train, key_bpd = jax.random.split(jax.random.PRNGKey(int(seed)), 4)
    x_train = _put(jnp.asarray(_pad_rows(split.x_train), dtype), dev)
    c_train = None if split.c_train is None else _put(jnp.asarray(_pad_rows(split.c_train), dtype), dev)
    if has_val:
        xv = split.x_val.astype(np.float64)
        if dequantize:
            xv = xv + np.asarray(jax.random.uniform(key_val, xv.shape), np.float64)
        val = _batched(xv, split.c_val, dtype, dev)
    stream = _Batches(split.rng, n_train, batch)

    if any(isinstance(t, ActNorm) and float(t.params["initialized"]) < 0.5 for t in flow.transforms):
        rows = split.rng.permutation(n_train)[:_INIT_ROWS]
        x0 = jnp.asarray(split.x_train[rows], dtype)
        if dequantize:
            x0 = x0 + jax.random.uniform(key_init, x0.shape, dtype)
        flow = initialize_flow(flow, x0, None if split.c_train is None else jnp.asarray(split.c_train[rows], dtype))
    flow = _put(flow, dev)

    # ------------------------------------------------------------------------------------------- optimizer
    params = flow.params
    names = tuple(sorted(params))
    last = len(flow.transforms) - 1
    decay = tuple(not (k.rsplit(".", 1)[-1] in _BUFFERS or (standardize and k.startswith(f"transforms.{last}.")))
                  for k in names)
    hyper = {"lr": jnp.asarray(lr, dtype), "weight_decay": jnp.asarray(weight_decay, dtype),
             "clip_norm": jnp.asarray(1.0 if clip_norm is None else clip_norm, dtype)}
    opt_state = _optimizer(hyper, decay, names).init(params)
    last_good = params if not has_val else None
    statics = {"decay": decay, "dequantize": bool(dequantize), "clip": clip_norm is not None, "track": not has_val}

    # ------------------------------------------------------------------------------------------- loop
    from tqdm.auto import tqdm

    history = FitHistory()
    best_params = params
    best, best_step, bad_evals, step, ema = math.inf, 0, 0, 0, None
    stopped = ""
    bar = tqdm(total=total, disable=not progress, desc="fit", unit="step", leave=True)

    def evaluate() -> bool:
        """Evaluate the validation loss after ``step`` updates; False when it is not finite."""
        nonlocal best, best_step, best_params, bad_evals
        value = float(_mean_nll(flow, params, *val))
        history.val_loss.append((step, value))
        if not math.isfinite(value):
            return False
        if value < best:
            best, best_step, best_params, bad_evals = value, step, params, 0
        else:
            bad_evals += 1
        bar.set_postfix(loss=f"{ema:.4g}" if ema is not None else "-", val=f"{value:.4g}", refresh=False)
        return True

    start = time.perf_counter()
    try:
        if has_val and not evaluate():
            stopped = "nan"
        idx = np.zeros((every, batch), np.int32)
        while not stopped and step < total:
            n = min(every, total - step)
            idx[:n] = stream.next(n)
            params, opt_state, last_good, ran, ok, losses = _train_chunk(
                flow, params, opt_state, last_good, x_train, c_train, _put(jnp.asarray(idx), dev),
                jnp.asarray(n, jnp.int32), jnp.asarray(step, jnp.int32), key_train, hyper, **statics)
            ran, ok = int(ran), bool(ok)
            values = np.asarray(losses[:ran], np.float64).tolist()
            history.train_loss.extend(values)
            for v in values[: ran if ok else ran - 1]:
                ema = v if ema is None else 0.98 * ema + 0.02 * v
            if not ok:
                stopped = "nan"
                step += ran - 1
                if not has_val:  # the last parameters with a finite loss
                    best_params = last_good
                    best_step = step if math.isfinite(values[-1]) else max(step - 1, 0)
                break
            step += ran
            bar.update(ran)
            if has_val:
                if not evaluate():
                    stopped = "nan"
                elif patience is not None and bad_evals >= int(patience):
                    stopped = "early_stopping"
            else:
                bar.set_postfix(loss=f"{ema:.4g}", refresh=False)
        if not stopped:
            stopped = "max_steps"
            if not has_val:
                best_params, best_step = params, step
    except KeyboardInterrupt:
        stopped = "interrupted"
        if not has_val:
            best_params, best_step = params, step
    finally:
        bar.close()
    history.seconds = time.perf_counter() - start
    history.num_steps = step

    # ------------------------------------------------------------------------------------------- outcome
    flow = flow.with_params(best_params)
    history.best_step = best_step
    history.best_val_loss = best if has_val and math.isfinite(best) else None
    history.stopped = stopped
    history.message = _outcome(stopped, step, best_step, history.best_val_loss, patience, lr)
    if stopped == "nan":
        warnings.warn(f"numpyroflows.fit: {history.message}", RuntimeWarning, stacklevel=2)
    if dequantize:
        nll = history.best_val_loss
        if not has_val:
            noisy = split.x_train + np.asarray(jax.random.uniform(key_bpd, split.x_train.shape), np.float64)
            nll = float(_mean_nll(flow, flow.params, *_batched(noisy, split.c_train, dtype, dev)))
        history.bits_per_dim = None if nll is None else nll / (flow.input_dim * math.log(2))
    return flow, history


__all__ = ["FitHistory", "fit"]
