"""Maximum-likelihood density estimation in JAX: :func:`fit` trains a flow on data with Adam, mini-batches and early
stopping, and returns the trained flow (a new pytree) with a :class:`FitHistory`. The backend-free half (argument
checks, the split, the batch order, the history) is :mod:`flowcommon.fit`, shared with pyroflows, whose ``fit`` has
the same keywords and defaults and, for the same ``seed``, the same split and batch order.

Training runs in jitted chunks: one compiled ``lax.while_loop`` performs up to ``eval_every`` optimizer steps on
batches gathered on the device (from a table of pre-permuted row indices), and one compiled function evaluates the
validation loss. Shapes are fixed (every batch has ``batch_size`` rows; the training rows on the device and the
validation batches are padded to a power of two, the padding never sampled or weighted 0), so a fit compiles each
function once, and later fits of a flow with the same structure on data of similar size reuse them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
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
    _check_settings,
    _Loop,
    _prepare,
    _Split,
    _standardize_stats,
)

from .._dtype import is_buffer
from ..flows.core import Flow
from ..functional.affine import MIN_SCALE, affine_scale
from ..transforms.linear import _BUFFERS, DiagonalAffine

Array = jax.Array


# ===================================================================================================== JAX parts
def _flow_dtype(flow: Flow) -> Any:
    """The floating type of the flow's parameters (not of its integer-valued buffers, stored in at least float32)."""
    for k, v in flow.params.items():
        if jnp.issubdtype(v.dtype, jnp.floating) and not is_buffer(k):
            return v.dtype
    return jnp.result_type(float)


def _optimizer(hyper: dict[str, Array], decay: tuple[bool, ...], names: tuple[str, ...], optimizer: Any,
               schedule: Callable | None) -> Any:
    """The update rule. Default: Adam with decoupled weight decay (AdamW; ``weight_decay = 0`` is Adam) on the
    parameters marked in ``decay``, the same update as ``torch.optim.AdamW``/``Adam``, at the constant ``lr`` or
    ``schedule(step)``. A given ``optimizer`` is applied to every parameter but the integer buffers."""
    if optimizer is not None:
        return optax.masked(optimizer, {k: k.rsplit(".", 1)[-1] not in _BUFFERS for k in names})
    lr = hyper["lr"] if schedule is None else schedule
    return optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=hyper["weight_decay"],
                       mask=dict(zip(names, decay)))


def _nll(params: dict[str, Array], flow: Flow, x: Array, c: Array | None) -> Array:
    return -jnp.mean(flow.with_params(params)(c).log_prob(x))


@partial(jax.jit, static_argnames=("decay", "dequantize", "clip", "track", "optimizer", "schedule"))
def _train_chunk(flow: Flow, params: dict, opt_state: Any, last_good: dict | None, x: Array, c: Array | None,
                 idx: Array, n: Array, step0: Array, key: Array, hyper: dict, noise_scale: Array, *,
                 decay: tuple[bool, ...], dequantize: bool, clip: bool, track: bool, optimizer: Any = None,
                 schedule: Callable | None = None) -> tuple:
    """Up to ``n`` optimizer steps on the batches ``x[idx[i]]`` (dequantization noise times ``noise_scale``); stops
    at the first non-finite loss or gradient without applying that step. Returns the new state, the number of steps
    run (the failing one included), whether all were finite, and the losses (``idx.shape[0]`` slots)."""
    names = tuple(sorted(params))
    opt = _optimizer(hyper, decay, names, optimizer, schedule)

    def cond(state):
        i, ok = state[0], state[4]
        return (i < n) & ok

    def body(state):
        i, params, opt_state, last_good, _, losses = state
        rows = idx[i]
        xb = x[rows]
        if dequantize:
            xb = xb + jax.random.uniform(jax.random.fold_in(key, step0 + i), xb.shape, xb.dtype) * noise_scale
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


class _Trainer:
    """One JAX fit: the flow being trained (with standardisation, the flow plus a :class:`DiagonalAffine` at the
    identity, trained on the data standardised in float64), its data on the device, the optimizer state and the
    current, last finite and best parameters; compiled chunks of steps, the evaluation, keeping and restoring (the
    backend half of :class:`flowcommon.fit._Loop`)."""

    def __init__(self, flow: Flow, split: _Split, standardize: bool, dequantize: bool, seed: int, dev: Any,
                 chunk: tuple[int, int]) -> None:
        self.dtype, self.dev, self.dequantize, self.steps = _flow_dtype(flow), dev, dequantize, 0
        self.std = (_standardize_stats(split.x_train, dequantize, float(jnp.finfo(self.dtype).eps), MIN_SCALE)
                    if standardize else None)
        self.model = flow if self.std is None else Flow(
            [*flow.transforms, DiagonalAffine(flow.input_dim, dtype=self.dtype)], base=flow.base)
        self.offset = 0.0 if self.std is None else self.std.log_det
        key_val, self.key_init, self.key_train, self.key_bpd = jax.random.split(jax.random.PRNGKey(int(seed)), 4)
        scaled = (lambda a: a) if self.std is None else self.std.apply
        self.x_np, self.c_np = scaled(split.x_train), split.c_train
        self.x = _put(jnp.asarray(_pad_rows(self.x_np), self.dtype), dev)
        self.c = None if self.c_np is None else _put(jnp.asarray(_pad_rows(self.c_np), self.dtype), dev)
        self.inv_sd = np.ones(flow.input_dim) if self.std is None else 1.0 / self.std.sd
        self.noise_scale = _put(jnp.asarray(self.inv_sd, self.dtype), dev)
        self.val = None
        if split.x_val is not None:
            xv = scaled(split.x_val).astype(np.float64)
            if dequantize:  # one fixed draw for the validation rows
                u = np.asarray(jax.random.uniform(key_val, xv.shape), np.float64)
                xv = xv + (u if self.std is None else u * self.inv_sd)
            self.val = _batched(xv, split.c_val, self.dtype, dev)
        self.idx = np.zeros(chunk, np.int32)

    def initialize(self, rng: np.random.Generator) -> None:
        """Data-dependent initialisation (:meth:`Flow.initialize`, ActNorm) on up to 4096 shuffled training rows."""
        if self.model.requires_initialization:
            rows = rng.permutation(self.x_np.shape[0])[:_INIT_ROWS]
            x0 = jnp.asarray(self.x_np[rows], self.dtype)
            if self.dequantize:
                u = jax.random.uniform(self.key_init, x0.shape, self.dtype)
                x0 = x0 + (u if self.std is None else u * jnp.asarray(self.inv_sd, self.dtype))
            c0 = None if self.c_np is None else jnp.asarray(self.c_np[rows], self.dtype)
            self.model = self.model.initialize(x0, c0)
        self.model = _put(self.model, self.dev)

    def optimize(self, optimizer: Any, scheduler: Callable | None, lr: float, weight_decay: float,
                 clip_norm: float | None) -> None:
        """The optimizer state and the compiled chunk's settings (weight decay spares the integer buffers and the
        standardisation layer)."""
        self.params = self.best = self.model.params
        names, last = tuple(sorted(self.params)), len(self.model.transforms) - 1
        decay = tuple(not (k.rsplit(".", 1)[-1] in _BUFFERS or (self.std is not None and
                                                                k.startswith(f"transforms.{last}."))) for k in names)
        self.hyper = {"lr": jnp.asarray(lr, self.dtype), "weight_decay": jnp.asarray(weight_decay, self.dtype),
                      "clip_norm": jnp.asarray(1.0 if clip_norm is None else clip_norm, self.dtype)}
        self.opt_state = _optimizer(self.hyper, decay, names, optimizer, scheduler).init(self.params)
        self.last_good = self.params if self.val is None else None
        self.statics = {"decay": decay, "dequantize": bool(self.dequantize), "clip": clip_norm is not None,
                        "track": self.val is None, "optimizer": optimizer, "schedule": scheduler}

    def train(self, idx: np.ndarray, record: Callable[[list[float], int], None]) -> int | None:
        """One compiled chunk of steps on the batches ``idx``, reported to ``record``; see
        :meth:`flowcommon.fit._Trainer.train`."""
        n = idx.shape[0]
        self.idx[:n] = idx
        idx_dev, n_dev, step0 = _put(jnp.asarray(self.idx), self.dev), jnp.asarray(n, jnp.int32), jnp.asarray(
            self.steps, jnp.int32)
        self.params, self.opt_state, self.last_good, ran, ok, losses = _train_chunk(
            self.model, self.params, self.opt_state, self.last_good, self.x, self.c, idx_dev, n_dev, step0,
            self.key_train, self.hyper, self.noise_scale, **self.statics)
        ran, ok = int(ran), bool(ok)
        values = np.asarray(losses[:ran], np.float64).tolist()
        self.steps += ran if ok else ran - 1
        record(values, ran if ok else ran - 1)
        if ok:
            return None
        if self.last_good is None or math.isfinite(values[-1]):
            return self.steps
        self.params = self.last_good  # the last parameters with a finite loss: those before the last applied step
        return max(self.steps - 1, 0)

    def evaluate(self) -> float:
        return float(_mean_nll(self.model, self.params, *self.val))

    def keep(self) -> None:
        self.best = self.params

    def flow(self, params: dict | None = None) -> Flow:
        """The flow as fit returns it, with ``params`` (the current ones by default): with standardisation,
        ``Flow([*flow.transforms, affine])`` whose affine is the standardisation composed (float64) with the trained
        one, ``x = loc + s ⊙ u``."""
        model = self.model.with_params(self.params if params is None else params)
        if self.std is None:
            return model
        *inner, trained = model.transforms
        shift = np.asarray(trained.params["head.shift"], np.float64)
        scale = np.asarray(affine_scale(trained.params["head.raw_scale"]), np.float64)
        loc, s = self.std.compose(shift, scale, MIN_SCALE)
        # the start, computed in float64, is exact in a float64 flow (lists: the configuration is saved as JSON)
        affine = DiagonalAffine(model.input_dim, loc=loc.tolist(), scale=s.tolist(), dtype=self.dtype)
        return Flow([*inner, _put(affine, self.dev)], base=model.base)

    def result(self) -> Flow:
        """The kept parameters, as :meth:`flow`."""
        return self.flow(self.best)

    def bits_per_dim(self, best_val_loss: float | None) -> float | None:
        """``best_val_loss / (D ln 2)``; without validation the NLL of the training rows with one noise draw."""
        nll = best_val_loss
        if self.val is None:
            u = np.asarray(jax.random.uniform(self.key_bpd, self.x_np.shape), np.float64)
            noisy = self.x_np + (u if self.std is None else u * self.inv_sd)
            batches = _batched(noisy, self.c_np, self.dtype, self.dev)
            nll = float(_mean_nll(self.model, self.best, *batches)) + self.offset
        return None if nll is None else nll / (self.model.input_dim * math.log(2))


def _check_optimizer(optimizer: Any, scheduler: Any, lr: float) -> None:
    if optimizer is not None and not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError("optimizer must be an optax.GradientTransformation (e.g. optax.adamw(1e-3)), got "
                        f"{type(optimizer).__name__}; pyroflows.fit takes a torch optimizer factory instead")
    if scheduler is not None:
        if optimizer is not None:
            raise TypeError("with optimizer= put the schedule into the optax optimizer (it carries its own schedule, "
                            "e.g. optax.adamw(optax.cosine_decay_schedule(1e-3, 1000))) and drop scheduler=")
        if not callable(scheduler):
            raise TypeError(f"scheduler must be an optax schedule step -> learning rate (e.g. "
                            f"optax.cosine_decay_schedule(1e-3, 1000)), got {type(scheduler).__name__}")
        if lr != 1e-3:
            raise ValueError("with scheduler= the schedule gives the learning rate: drop lr=")


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
    optimizer: Any = None,
    scheduler: Callable[[Array], Array] | None = None,
    callback: Callable[[int, float, Flow], bool | None] | None = None,
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
        data: ``(N, input_dim)`` array (NumPy, JAX, torch or a nested list); integer-valued data without
            ``dequantize`` draw a warning.
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
        standardize: standardise each column in float64, ``y = (x - mean) / sd`` (training mean and sd, of ``x + u``
            with dequantization), and train the flow followed by a
            :class:`~numpyroflows.transforms.linear.DiagonalAffine` (starting at the identity) on ``y``. The returned
            flow is ``Flow([*flow.transforms, affine], base=flow.base)`` with an affine in data space,
            ``x = loc + s ⊙ u``, composed in float64 from the standardisation and the trained affine, so its
            ``log_prob`` is that of the data. Refused, naming the fix: a constant column, a column whose sd is at or
            below the affine's floor 1e-3, or whose offset the flow's dtype cannot resolve against its sd (fit a
            float64 flow, built with ``jax_enable_x64``).
        optimizer: an ``optax.GradientTransformation`` replacing Adam, e.g. ``optax.adamw(optax.cosine_decay_schedule(
            3e-4, 2000))``; it carries its own learning rate and schedule (then ``lr``, ``weight_decay`` and
            ``scheduler`` stay at their defaults). Applied to every parameter but the integer buffers; gradient
            clipping still applies.
        scheduler: an optax schedule ``step -> learning rate`` for the default Adam instead of the constant ``lr``
            (e.g. ``optax.cosine_decay_schedule(1e-3, 2000)``); pyroflows takes a torch scheduler factory here.
        callback: ``callback(step, loss, flow) -> bool | None``, called every ``eval_every`` steps (after the
            evaluation, between compiled chunks) with the number of updates so far, the validation NLL (without
            validation: the mean training loss of those steps) and the flow as it would be returned now; returning
            True stops training (``history.stopped == "callback"``, the best parameters are returned as for early
            stopping).
        device: a ``jax.Device`` or a platform name (``"cpu"``, ``"gpu"``) to train on; ``None``: JAX's default.
        progress: show a tqdm bar with the running (exponential average) training loss and the last validation loss.
        seed: seeds the split and batch order (NumPy, as pyroflows) and the dequantization noise (``PRNGKey(seed)``).

    Returns:
        ``(flow, history)``: the fitted flow, holding the best parameters, and a :class:`FitHistory`.

    A non-finite loss or gradient stops training at once (the failing step is not applied), returns the best
    parameters (without validation: the last ones with a finite training loss) and warns. Transforms with a
    data-dependent initialisation not yet run (``ActNorm``) are initialised by
    :meth:`~numpyroflows.flows.Flow.initialize` on up to 4096 shuffled training rows before the first step.

    The start: the recipes begin at their base distribution (conditioners' ``output_init=1e-3``); for maximum
    likelihood that is also the better start for spline flows (NSF), while ``output_init="fan_in"`` (random output
    weights, as in zuko and FlowJAX) can suit the affine MAF.

    Example:
        >>> flow = flows.MAF(input_dim=2, key=jax.random.PRNGKey(0))
        >>> flow, history = fit(flow, x, max_steps=2000)
        >>> history.best_val_loss, flow().log_prob(x_test).mean()
        >>> flow, history = fit(flow, x, optimizer=optax.adamw(3e-4), callback=lambda step, loss, flow: loss < -1.0)

    References: Papamakarios et al. (2021), "Normalizing flows for probabilistic modeling and inference" (§2.3,
    maximum likelihood); Theis et al. (2016), "A note on the evaluation of generative models" (dequantization).
    """
    if not isinstance(flow, Flow):
        raise TypeError(f"fit takes a numpyroflows Flow (e.g. numpyroflows.flows.MAF(input_dim=2)), got "
                        f"{type(flow).__name__}")
    _check_settings(lr, weight_decay, patience, optimizer is not None, callback)
    _check_optimizer(optimizer, scheduler, lr)
    if not any(k.rsplit(".", 1)[-1] not in _BUFFERS for k in flow.params):
        raise ValueError("the flow has no trainable parameters (only fixed permutations): there is nothing to fit")
    split = _prepare(flow, data, context, validation_fraction, validation_data, validation_context, dequantize, seed)
    batch, _, total, every = _budget(split.x_train.shape[0], batch_size, max_steps, epochs, eval_every)
    trainer = _Trainer(flow, split, standardize, dequantize, seed, _resolve_device(device), (every, batch))
    trainer.initialize(split.rng)
    trainer.optimize(optimizer, scheduler, lr, weight_decay, clip_norm)
    loop = _Loop(total, every, patience, split.x_val is not None, progress, callback, trainer.offset)
    loop.run(trainer, _Batches(split.rng, split.x_train.shape[0], batch))
    flow = trainer.result()
    history = loop.finish(lr if optimizer is None and scheduler is None else None)
    if history.stopped == "nan":
        warnings.warn(f"numpyroflows.fit: {history.message}", RuntimeWarning, stacklevel=2)
    if dequantize:
        history.bits_per_dim = trainer.bits_per_dim(history.best_val_loss)
    return flow, history


__all__ = ["FitHistory", "fit"]
