"""Density-estimation benchmark: held-out log-likelihood of pyroflows vs zuko and numpyroflows vs FlowJAX.

Usage::

    python benchmarks/density.py [--quick] [--steps N] [--seeds 0 1 ...] [--digits-steps N] [--digits-seeds 0 ...]
                                 [--pairs torch jax] [--toys moons ...] [--kinds maf nsf] [--output-init 1e-3 fan_in]
                                 [--affine-scale exp|softplus] [--randperm] [--no-digits] [--no-toys] [--threads T]
                                 [--out benchmarks/out/density.md]

What is compared. The same two flows in four libraries, with matching architectures:

* MAF: 5 autoregressive layers, affine transformers, masked networks with hidden layers (64, 64), ReLU, the variable
  order reversed between layers, standard normal base. pyroflows/numpyroflows ``flows.MAF(D, num_transforms=5,
  hidden_dims=(64, 64))``; zuko ``zuko.flows.MAF(D, transforms=5, hidden_features=(64, 64))``; FlowJAX
  ``masked_autoregressive_flow(key, base_dist=Normal(zeros(D)), flow_layers=5, nn_width=64, nn_depth=2,
  invert=True)`` (its default affine transformer; between layers a flip for D = 2, a random permutation for D > 2).
* Our flows are fitted once per ``--output-init`` value (default both): ``1e-3``, the library default, starts every
  layer within about 1e-3 of the identity (what ``AutoFlowGuide`` and ``FlowEncoder`` need); ``"fan_in"`` draws the
  output weights of the conditioners from ``U(±1/sqrt(64))`` like the other layers, as zuko's and FlowJAX's
  conditioners (``nn.Linear``, ``equinox.nn.Linear``) do. Both keep the output bias at the transformer's identity.
  A table pairs the two starts seed by seed.
* ``--affine-scale softplus`` builds our MAFs with ``transformer={"name": "affine", "scale": "softplus"}`` (the scale
  ``1e-3 + softplus(r + c)``, FlowJAX's form) instead of the default ``exp`` of a soft-clamped log-scale.
* ``--randperm`` builds our MAFs and NSFs with ``randperm=True``: a random variable order for every layer after the
  first instead of the order reversed between layers (FlowJAX permutes at random for D > 2; for D = 2 either way is
  a flip or the identity).
* NSF: the same with rational-quadratic spline transformers of 8 bins on [-5, 5] and identity tails: ours
  ``flows.NSF(D, num_transforms=5, hidden_dims=(64, 64), count_bins=8, bound=5)``; zuko ``zuko.flows.NSF(D,
  transforms=5, hidden_features=(64, 64), bins=8)`` (zuko's bound is 5, checked at build time); FlowJAX
  ``transformer=RationalQuadraticSpline(knots=7, interval=5)`` (FlowJAX counts *inner* knots: 7 give 8 bins; it also
  learns the two boundary derivatives, which ours and zuko fix to 1 so the spline joins its identity tails smoothly).

How they are trained: one hand-written loop per backend, identical for both libraries of a pair, so that only the flow
differs: the same training points, the same sequence of mini-batches (batch 512; indices drawn from a seeded numpy
generator), Adam with learning rate 1e-3 decayed to 0 by a cosine over the run, gradients clipped at global norm 5,
the same number of steps (``--steps``, default 2000), the final parameters (no early stopping on the toys). torch
loops run step by step in Python; JAX loops run as one ``jax.jit``-compiled ``lax.scan`` per library (the FlowJAX and
numpyroflows losses go through the same scan, optax chain and data). ``fit_to_data`` (FlowJAX) and
``pyroflows.fit``/``numpyroflows.fit`` are not used, as their defaults (validation split, early stopping, learning rate
schedule) differ.

Toy data: the six FFJORD densities of ``examples/data2d.py`` (moons, 8gaussians, checkerboard, pinwheel, 2spirals,
rings): 20,000 training points (seed 0) and an independent held-out draw of 5,000 (seed 1000), the same for every
library and seed; ``--seeds`` (default 0 1 2 3) changes the initialization and the mini-batch order. The table reports
the mean held-out log-likelihood in nats per point (higher is better) averaged over seeds, ``ours - theirs`` with a
standard error (the larger of the paired one over held-out points and the one over seeds), the per-seed
differences, and a verdict: ``ours >=``, ``~`` (behind by less than two standard errors) or ``theirs better``.
8gaussians and checkerboard have a closed-form density: its held-out log-likelihood is printed as ``true``.

How many seeds. The spread between initializations is large for the affine MAF on the harder toys (per-seed sd about
0.065 nats on 2spirals), so four seeds cannot tell apart differences of a few hundredths: on 2spirals and rings,
torch, default start, seeds 0-3 gave ours - zuko = -0.081 and -0.077, seeds 100-131 gave -0.018 ± 0.012 and
-0.017 ± 0.008. Use ``--toys 2spirals rings --kinds maf --seeds $(seq 0 31)`` to settle such a gap. Findings so far
(``RESULTS.md``): pyroflows' MAF computes exactly zuko's function given zuko's weights, and the same training loop
from zuko's initial weights matches zuko; the ``"fan_in"`` start raises the affine MAF on rings by about 0.03 nats in
both backends (paired over seeds) and leaves the other toys unchanged within noise, but costs the NSF 0.06-0.07 nats
on rings and 0.04-0.055 bits/dim on digits; with it, over seeds 0-31, the MAF's ours - zuko is -0.021 ± 0.014 on
2spirals and ours - FlowJAX -0.043 ± 0.013. What is left is the start, not the flow: started from FlowJAX's
initial weights (``same_start.py``), our JAX MAF ends level with FlowJAX (-0.0005 ± 0.004 on 2spirals, +0.003 ±
0.002 on rings, 32 seeds), and from independent draws of FlowJAX's start (output weights and bias random, its softplus
scale) within -0.008 ± 0.007 (64 seeds); from the identity start, no parameterization of the scale tried (the
softplus, zuko's bound, a tanh clamp and others) closes the gap (all at -0.035 or below).

Digits (``sklearn.datasets.load_digits``: 1797 images of 8x8 pixels with values 0..16, D = 64): a seeded split into
1257 training, 180 validation and 360 test images. Training batches (256) are dequantized afresh at each step,
``y = (x + u) / 17`` with ``u ~ U[0, 1)^64``, so ``y`` lies in ``[0, 1)^64``; validation and test images get fixed
noise (5 draws per test image). Default 1500 steps, seed 0 only (``--digits-seeds``). Every 100 steps the validation
loss is computed and the best parameters are kept (the same early-stopping rule for every library, as 1257 images
overfit quickly); the test figure is for those.

Bits per dimension, derived. The flow models the density ``p_Y`` of ``y = v / 17`` where ``v = x + u`` is the
dequantized image. The change of variables ``v = 17 y`` gives ``p_V(v) = p_Y(v / 17) * 17^-64``, so
``-log p_V(v) = -log p_Y(y) + 64 log 17``. The discrete model ``P(x) = ∫_[0,1)^64 p_V(x + u) du`` satisfies
``log P(x) >= E_u log p_V(x + u)`` (Jensen; Theis et al. 2016), so the test figure

    bits/dim = (NLL_Y + 64 log 17) / (64 log 2) = NLL_Y / (64 log 2) + log2(17),

with ``NLL_Y = -E log p_Y(y)`` in nats per image estimated on the test set, is an upper bound on the discrete model's
code length in bits per pixel. (``NLL_Y`` is usually negative: ``y`` lives in the unit cube, where densities exceed 1.)
A model that puts a uniform density on ``[0, 1)^64`` has ``NLL_Y = 0`` and gets ``log2(17) = 4.09`` bits/dim, the
cost of coding each pixel uniformly among its 17 values; a full-covariance Gaussian fitted to the dequantized training
images is printed as a second baseline.

Results go to stdout and, as markdown, to ``--out`` (default ``benchmarks/out/density.md``).
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))  # examples/data2d.py: the toy densities

import data2d  # noqa: E402

TOYS = ("moons", "8gaussians", "checkerboard", "pinwheel", "2spirals", "rings")
KINDS = ("maf", "nsf")
N_TRAIN, N_TEST = 20_000, 5_000
BATCH, DIGITS_BATCH = 512, 256
LR, CLIP = 1e-3, 5.0
NUM_TRANSFORMS, HIDDEN, COUNT_BINS, BOUND = 5, (64, 64), 8, 5.0
DIGITS_LEVELS = 17  # pixel values 0..16
DIGITS_SPLIT = (1257, 180, 360)  # train, validation, test
DIGITS_EVAL_EVERY, DIGITS_TEST_DRAWS = 100, 5
PAIRS = {"torch": ("pyroflows", "zuko"), "jax": ("numpyroflows", "flowjax")}
#: our flows' output_init values fitted by default: the library default (start at the identity) and the random
#: start of zuko's and FlowJAX's conditioners
STARTS = ("1e-3", "fan_in")
DEFAULT_START = STARTS[0]
#: our MAFs' affine scale (``--affine-scale``) and our autoregressive flows' ``randperm`` (``--randperm``)
AFFINE_SCALE = "exp"
RANDPERM = False
#: toys: held-out log-densities below this (nats) are counted in the notes (true log-densities lie above -10; an
#: affine layer near its minimum scale can put a single held-out point thousands of nats down and move the mean)
OUTLIER_LP = -50.0


def cosine_factor(step: int | Any, steps: int):
    """Learning-rate multiplier at ``step`` of ``steps``: ``(1 + cos(π step / steps)) / 2`` (1 -> 0)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


# ================================================================================================ data
@dataclass
class Task:
    """A data set as the loops see it: float32 arrays, plus how to turn a training batch into model input."""

    name: str
    train: np.ndarray
    test: np.ndarray  # what the test log-likelihood is averaged over (dequantized already for digits)
    val: np.ndarray | None = None
    dequantize: bool = False  # digits: train batches get fresh noise each step, y = (x + u) / 17
    batch: int = BATCH
    true_ll: float = float("nan")


def toy_task(name: str) -> Task:
    train = data2d.sample(name, N_TRAIN, seed=0)
    test = data2d.sample(name, N_TEST, seed=1000)
    exact = data2d.LOG_PROBS.get(name)
    true_ll = float(np.mean(exact(test))) if exact is not None else float("nan")
    return Task(name, train, test, true_ll=true_ll)


def digits_task() -> Task:
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32)  # (1797, 64), integers 0..16
    rng = np.random.default_rng(0)
    x = x[rng.permutation(len(x))]
    n_train, n_val, n_test = DIGITS_SPLIT
    train, val, test = x[:n_train], x[n_train:n_train + n_val], x[n_train + n_val:n_train + n_val + n_test]
    val = (val + rng.uniform(size=val.shape)) / DIGITS_LEVELS
    test = np.repeat(test, DIGITS_TEST_DRAWS, axis=0)
    test = (test + rng.uniform(size=test.shape)) / DIGITS_LEVELS
    return Task("digits", train, test.astype(np.float32), val.astype(np.float32), dequantize=True,
                batch=DIGITS_BATCH)


def batch_indices(n: int, batch: int, steps: int, seed: int) -> np.ndarray:
    """``(steps, batch)`` training indices: shuffled epochs, the same for every library of a run and seed."""
    rng = np.random.default_rng(10_000 + seed)
    per_epoch = n // batch
    epochs = -(-steps // per_epoch)
    idx = np.concatenate([rng.permutation(n)[: per_epoch * batch] for _ in range(epochs)])
    return idx[: steps * batch].reshape(steps, batch).astype(np.int32)


def gaussian_ll(train: np.ndarray, test: np.ndarray) -> float:
    """Held-out log-likelihood of the maximum-likelihood full-covariance Gaussian of ``train``."""
    mean = train.mean(0)
    cov = np.cov(train.T, bias=True) + 1e-6 * np.eye(train.shape[1])
    chol = np.linalg.cholesky(cov)
    sol = np.linalg.solve(chol, (test - mean).T)
    d = train.shape[1]
    return float(np.mean(-0.5 * (sol**2).sum(0)) - np.log(np.diag(chol)).sum() - 0.5 * d * math.log(2 * math.pi))


def bits_per_dim(ll_y: float, dim: int = 64) -> float:
    """Bits per pixel of the dequantized images from the log-likelihood of ``y = (x + u) / 17`` (see the module
    docstring): ``(-ll_y + D log 17) / (D log 2)``."""
    return (-ll_y + dim * math.log(DIGITS_LEVELS)) / (dim * math.log(2.0))


# ================================================================================================ results
@dataclass
class FitResult:
    library: str
    kind: str
    task: str
    seed: int
    test_lp: np.ndarray | None  # per-point held-out log-likelihood
    seconds: float
    params: int = 0
    status: str = "ok"
    best_step: int | None = None
    start: str = ""  # ours: the output_init the flow was built with ("" for the peers)

    @property
    def ll(self) -> float:
        if self.test_lp is None:
            return float("nan")
        return float(np.mean(self.test_lp))


# ================================================================================================ torch
def maf_transformer() -> str | dict:
    """Our MAFs' transformer: ``"affine"``, or the spec with the ``--affine-scale`` chosen."""
    return "affine" if AFFINE_SCALE == "exp" else {"name": "affine", "scale": AFFINE_SCALE}


def output_init(start: str) -> float | str:
    """``--output-init`` value -> the flows' ``output_init`` argument (``"fan_in"`` or a half-width)."""
    return start if start == "fan_in" else float(start)


def build_torch(library: str, kind: str, dim: int, start: str = DEFAULT_START):
    """A torch flow module and ``log_prob(x)`` for it (``start``: our flows' ``output_init``)."""
    import torch

    if library == "pyroflows":
        from pyroflows import flows

        if kind == "maf":
            flow = flows.MAF(dim, num_transforms=NUM_TRANSFORMS, hidden_dims=HIDDEN, transformer=maf_transformer(),
                             output_init=output_init(start), randperm=RANDPERM)
        else:
            flow = flows.NSF(dim, num_transforms=NUM_TRANSFORMS, hidden_dims=HIDDEN, count_bins=COUNT_BINS,
                             bound=BOUND, output_init=output_init(start), randperm=RANDPERM)
    else:
        import zuko

        if kind == "maf":
            flow = zuko.flows.MAF(dim, transforms=NUM_TRANSFORMS, hidden_features=HIDDEN)
        else:
            bound = inspect.signature(zuko.transforms.MonotonicRQSTransform).parameters["bound"].default
            if bound != BOUND:
                raise RuntimeError(f"zuko's spline bound is {bound}, the benchmark assumes {BOUND}")
            flow = zuko.flows.NSF(dim, transforms=NUM_TRANSFORMS, hidden_features=HIDDEN, bins=COUNT_BINS)
    flow = flow.to(torch.float32)
    return flow, lambda x: flow().log_prob(x)


def fit_torch(library: str, kind: str, task: Task, steps: int, seed: int, start: str = "") -> FitResult:
    import torch

    dim = task.train.shape[1]
    torch.manual_seed(seed)
    module, log_prob = build_torch(library, kind, dim, start or DEFAULT_START)
    n_params = sum(p.numel() for p in module.parameters())
    x = torch.from_numpy(task.train)
    idx = torch.from_numpy(batch_indices(len(x), task.batch, steps, seed)).long()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=LR)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: cosine_factor(t, steps))
    noise = torch.Generator().manual_seed(20_000 + seed)  # dequantization noise: the same for both torch libraries
    val = torch.from_numpy(task.val) if task.val is not None else None
    best = (math.inf, None, None)  # (val loss, step, state)
    status = "ok"
    t0 = time.perf_counter()
    for step in range(steps):
        xb = x[idx[step]]
        if task.dequantize:
            xb = (xb + torch.rand(xb.shape, generator=noise)) / DIGITS_LEVELS
        loss = -log_prob(xb).mean()
        if not torch.isfinite(loss):
            status = f"non-finite loss at step {step}"
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        sched.step()
        if val is not None and ((step + 1) % DIGITS_EVAL_EVERY == 0 or step + 1 == steps):
            with torch.no_grad():
                v = -log_prob(val).mean().item()
            if v < best[0]:
                best = (v, step + 1, {k: t.detach().clone() for k, t in module.state_dict().items()})
    seconds = time.perf_counter() - t0
    if best[2] is not None:
        module.load_state_dict(best[2])
    with torch.no_grad():
        lp = torch.cat([log_prob(torch.from_numpy(c)) for c in np.array_split(task.test, max(1, len(task.test)
                                                                                              // 5000))])
    lp = lp.double().numpy()
    if not np.all(np.isfinite(lp)) and status == "ok":
        status = "non-finite test log-likelihood"
    return FitResult(library, kind, task.name, seed, lp, seconds, n_params, status, best[1], start)


# ================================================================================================ JAX
_JAX_CACHE: dict = {}


def build_jax(library: str, kind: str, dim: int, seed: int, start: str = DEFAULT_START):
    """Initial parameters and a pure ``log_prob(params, x)``; the function is shared by all seeds of one
    ``(library, kind, dim)`` so that the compiled training loop is reused (``start`` changes only the initial
    values, not the function)."""
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(seed)
    if library == "numpyroflows":
        from numpyroflows import flows

        if kind == "maf":
            flow = flows.MAF(dim, num_transforms=NUM_TRANSFORMS, hidden_dims=HIDDEN, transformer=maf_transformer(),
                             output_init=output_init(start), randperm=RANDPERM, key=key)
        else:
            flow = flows.NSF(dim, num_transforms=NUM_TRANSFORMS, hidden_dims=HIDDEN, count_bins=COUNT_BINS,
                             bound=BOUND, output_init=output_init(start), randperm=RANDPERM, key=key)
        params = flow.params
        cache_key = (library, kind, dim)
        if cache_key not in _JAX_CACHE:
            template = flow
            _JAX_CACHE[cache_key] = lambda p, x: template.with_params(p)().log_prob(x)
        return params, _JAX_CACHE[cache_key]

    import equinox as eqx
    import paramax
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import masked_autoregressive_flow

    kwargs = {} if kind == "maf" else {"transformer": RationalQuadraticSpline(knots=COUNT_BINS - 1, interval=BOUND)}
    flow = masked_autoregressive_flow(key, base_dist=Normal(jnp.zeros(dim)), flow_layers=NUM_TRANSFORMS,
                                      nn_width=HIDDEN[0], nn_depth=len(HIDDEN), invert=True, **kwargs)
    params, static = eqx.partition(flow, eqx.is_inexact_array,
                                   is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))
    cache_key = (library, kind, dim)
    if cache_key not in _JAX_CACHE:
        _JAX_CACHE[cache_key] = lambda p, x: paramax.unwrap(eqx.combine(p, static)).log_prob(x)
    return params, _JAX_CACHE[cache_key]


_TRAINERS: dict = {}


def jax_trainer(log_prob: Callable, steps: int, dequantize: bool):
    """A jitted ``run(params, opt_state, x, idx, key) -> (params, opt_state, losses)`` scanning over the rows of
    ``idx`` (one step each), and the optax optimizer; cached per loss function and budget."""
    import jax
    import optax

    cache_key = (log_prob, steps, dequantize)
    if cache_key in _TRAINERS:
        return _TRAINERS[cache_key]
    opt = optax.chain(optax.clip_by_global_norm(CLIP), optax.adam(optax.cosine_decay_schedule(LR, steps)))

    def step(carry, inp):
        params, state = carry
        xb, key = inp
        if dequantize:
            xb = (xb + jax.random.uniform(key, xb.shape)) / DIGITS_LEVELS
        loss, grad = jax.value_and_grad(lambda p: -log_prob(p, xb).mean())(params)
        updates, state = opt.update(grad, state, params)
        return (optax.apply_updates(params, updates), state), loss

    @jax.jit
    def run(params, state, x, idx, key):
        keys = jax.random.split(key, idx.shape[0])
        (params, state), losses = jax.lax.scan(step, (params, state), (x[idx], keys))
        return params, state, losses

    evaluate = jax.jit(lambda p, x: log_prob(p, x))
    _TRAINERS[cache_key] = (run, opt, evaluate)
    return run, opt, evaluate


def fit_jax(library: str, kind: str, task: Task, steps: int, seed: int, start: str = "") -> FitResult:
    import jax
    import jax.numpy as jnp

    dim = task.train.shape[1]
    params, log_prob = build_jax(library, kind, dim, seed, start or DEFAULT_START)
    n_params = int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))
    run, opt, evaluate = jax_trainer(log_prob, steps, task.dequantize)
    x = jnp.asarray(task.train)
    idx = batch_indices(len(task.train), task.batch, steps, seed)
    state = opt.init(params)
    key = jax.random.PRNGKey(20_000 + seed)  # dequantization noise: the same for both JAX libraries
    chunk = DIGITS_EVAL_EVERY if task.val is not None else steps
    best = (math.inf, None, None)
    status = "ok"
    t0 = time.perf_counter()
    for first in range(0, steps, chunk):
        rows = idx[first:first + chunk]
        if len(rows) < chunk:  # keep one compiled shape: pad the last chunk (never happens for the default budgets)
            raise ValueError(f"steps ({steps}) must be a multiple of {chunk}")
        params, state, losses = run(params, state, x, jnp.asarray(rows), jax.random.fold_in(key, first))
        if not bool(jnp.all(jnp.isfinite(losses))):
            status = f"non-finite loss before step {first + chunk}"
            break
        if task.val is not None:
            v = -float(jnp.mean(evaluate(params, jnp.asarray(task.val))))
            if v < best[0]:
                best = (v, first + chunk, params)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - t0
    if best[2] is not None:
        params = best[2]
    lp = np.concatenate([np.asarray(evaluate(params, jnp.asarray(c)))
                         for c in np.array_split(task.test, max(1, len(task.test) // 5000))]).astype(np.float64)
    if not np.all(np.isfinite(lp)) and status == "ok":
        status = "non-finite test log-likelihood"
    return FitResult(library, kind, task.name, seed, lp, seconds, n_params, status, best[1], start)


# ================================================================================================ driver
@dataclass
class Run:
    results: list[FitResult] = field(default_factory=list)

    def get(self, library: str, kind: str, task: str, start: str | None = None) -> list[FitResult]:
        return [r for r in self.results if r.library == library and r.kind == kind and r.task == task
                and (start is None or r.start == start)]


def fit_one(pair: str, library: str, kind: str, task: Task, steps: int, seed: int, start: str = "") -> FitResult:
    """One fit; ``start`` (our libraries only) is the ``output_init`` of our flow."""
    fit = fit_torch if pair == "torch" else fit_jax
    try:
        res = fit(library, kind, task, steps, seed, start)
    except Exception as err:  # a peer that breaks must not stop the benchmark
        res = FitResult(library, kind, task.name, seed, None, float("nan"), status=f"{type(err).__name__}: {err}",
                        start=start)
    best = f", best step {res.best_step}" if res.best_step else ""
    extra = "" if res.status == "ok" else f"  [{res.status}]"
    label = f"{library} ({start})" if start else library
    print(f"  {task.name:<12} {kind.upper():<4} {label:<22} seed {seed}: held-out LL {res.ll:9.4f}   "
          f"{res.seconds:6.1f} s{best}{extra}", flush=True)
    return res


def fit_all(run: Run, pairs: Sequence[str], kinds: Sequence[str], starts: Sequence[str], task: Task, steps: int,
            seed: int) -> None:
    """Every library of ``pairs`` on ``task`` for one seed: ours once per start, the peers once."""
    for pair in pairs:
        ours, theirs = PAIRS[pair]
        for kind in kinds:
            for start in starts:
                run.results.append(fit_one(pair, ours, kind, task, steps, seed, start))
            run.results.append(fit_one(pair, theirs, kind, task, steps, seed))


def paired(ours: list[FitResult], theirs: list[FitResult]) -> tuple[float, float]:
    """Mean over seeds of ``mean(lp_ours - lp_theirs)`` on the held-out points, and a standard error for it: the
    larger of the paired standard error over held-out points (averaged over seeds) and, with two or more seeds, the
    standard error of the per-seed differences (training noise, usually the larger)."""
    diffs, ses = [], []
    for a, b in zip(ours, theirs):
        if a.test_lp is None or b.test_lp is None:
            return float("nan"), float("nan")
        d = a.test_lp - b.test_lp
        diffs.append(float(np.mean(d)))
        ses.append(float(np.std(d) / math.sqrt(len(d))))
    if not diffs:
        return float("nan"), float("nan")
    se = float(np.mean(ses))
    if len(diffs) > 1:
        se = max(se, float(np.std(diffs, ddof=1) / math.sqrt(len(diffs))))
    return float(np.mean(diffs)), se


def fmt(v: float, digits: int = 3) -> str:
    return "-" if v != v else f"{v:.{digits}f}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(diff: float, se: float) -> str:
    """``ours >=`` when ours is at least as good on average, ``~`` when behind by less than two standard errors (see
    :func:`paired`), ``theirs better`` otherwise."""
    if diff != diff:
        return "n/a"
    if diff >= 0:
        return "ours >="
    return "~ (within 2 se)" if -diff < 2 * se else "theirs better"


def toy_tables(run: Run, pairs: Sequence[str], toys: Sequence[str], kinds: Sequence[str], starts: Sequence[str],
               seeds: Sequence[int], true_ll: dict[str, float]) -> str:
    out = []
    for pair in pairs:
        ours, theirs = PAIRS[pair]
        rows = []
        for toy in toys:
            for kind, start in ((k, s) for k in kinds for s in starts):
                a, b = run.get(ours, kind, toy, start), run.get(theirs, kind, toy)
                ll_a = float(np.mean([r.ll for r in a])) if a else float("nan")
                ll_b = float(np.mean([r.ll for r in b])) if b else float("nan")
                diff, se = paired(a, b)
                per_seed = " ".join(f"{ra.ll - rb.ll:+.3f}" for ra, rb in zip(a, b))
                t_a = float(np.mean([r.seconds for r in a])) if a else float("nan")
                t_b = float(np.mean([r.seconds for r in b])) if b else float("nan")
                notes = sorted({f"{r.library}: {r.status}" for r in a + b if r.status != "ok"})
                for r in a + b:  # single held-out points far below the rest can dominate a mean
                    low = int((r.test_lp < OUTLIER_LP).sum()) if r.test_lp is not None else 0
                    if low:
                        notes.append(f"{r.library} seed {r.seed}: {low} point(s) < {OUTLIER_LP:g} "
                                     f"(min {r.test_lp.min():.3g})")
                notes = "; ".join(notes)
                rows.append([toy, kind.upper(), start, fmt(ll_a), fmt(ll_b), f"{fmt(diff)} ± {fmt(se)}", per_seed,
                             verdict(diff, se), fmt(true_ll.get(toy, float("nan"))), fmt(t_a, 1), fmt(t_b, 1),
                             notes])
        headers = ["toy", "flow", "our output_init", ours, theirs, "ours - theirs ± se", "per seed", "verdict", "true",
                   f"{ours} s", f"{theirs} s", "notes"]
        out.append(f"### {ours} vs {theirs} (held-out log-likelihood, nats/point, mean over seeds {list(seeds)})\n\n"
                   + md_table(headers, rows))
    return "\n\n".join(out)


def start_table(run: Run, pairs: Sequence[str], toys: Sequence[str], kinds: Sequence[str],
                starts: Sequence[str]) -> str:
    """Our flows' other starts against the first, paired by seed (same hidden-layer weights and mini-batches)."""
    rows = []
    for pair in pairs:
        ours = PAIRS[pair][0]
        for toy in toys:
            for kind in kinds:
                base = run.get(ours, kind, toy, starts[0])
                for start in starts[1:]:
                    other = run.get(ours, kind, toy, start)
                    diff, se = paired(other, base)
                    per_seed = " ".join(f"{ra.ll - rb.ll:+.3f}" for ra, rb in zip(other, base))
                    rows.append([ours, toy, kind.upper(), f"{fmt(diff)} ± {fmt(se)}", per_seed])
    headers = ["library", "toy", "flow", f"output_init {' / '.join(starts[1:])} - {starts[0]} ± se", "per seed"]
    return ("### Our flows' starts compared (held-out log-likelihood, nats/point; higher is better)\n\n"
            + md_table(headers, rows))


def digits_table(run: Run, pairs: Sequence[str], kinds: Sequence[str], starts: Sequence[str], seeds: Sequence[int],
                 baselines: dict[str, float]) -> str:
    rows = []
    for pair in pairs:
        ours, theirs = PAIRS[pair]
        for library, start in [(ours, s) for s in starts] + [(theirs, "")]:
            for kind in kinds:
                res = run.get(library, kind, "digits", start)
                if not res:
                    continue
                bpd = [bits_per_dim(r.ll) for r in res]
                steps = ", ".join(str(r.best_step) for r in res)
                notes = "; ".join(sorted({r.status for r in res if r.status != "ok"}))
                label = f"{library} ({start})" if start else library
                rows.append([label, kind.upper(), f"{np.mean(bpd):.3f}", " ".join(f"{b:.3f}" for b in bpd),
                             fmt(float(np.mean([r.ll for r in res])), 2), steps, str(res[0].params),
                             fmt(float(np.mean([r.seconds for r in res])), 1), notes])
    for name, ll in baselines.items():
        rows.append([name, "-", f"{bits_per_dim(ll):.3f}", "", fmt(ll, 2), "", "", "", ""])
    headers = ["library", "flow", "test bits/dim", "per seed", "test LL of y (nats/image)", "best step",
               "params", "train s", "notes"]
    return (f"### digits (64-d, dequantized; test bits/dim, lower is better; seeds {list(seeds)})\n\n"
            + md_table(headers, rows))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 200 steps, one seed, two toys")
    parser.add_argument("--steps", type=int, default=None, help="training steps on each toy (default 2000)")
    parser.add_argument("--digits-steps", type=int, default=None, help="training steps on digits (default 1500)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2 3)")
    parser.add_argument("--digits-seeds", type=int, nargs="+", default=None,
                        help="seeds for digits (default: the first of --seeds)")
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=["torch", "jax"])
    parser.add_argument("--toys", nargs="+", choices=TOYS, default=None)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="flows to fit (default both)")
    parser.add_argument("--output-init", nargs="+", default=list(STARTS), metavar="START",
                        help="our flows' output_init, one fit per value: 'fan_in' or a half-width (default 1e-3 "
                             "fan_in: the library default and the peers' random start)")
    parser.add_argument("--affine-scale", choices=("exp", "softplus"), default="exp",
                        help="our MAFs' affine scale (default exp, the library default)")
    parser.add_argument("--randperm", action="store_true",
                        help="our MAFs/NSFs with randperm=True (a random order per layer; default: reversed)")
    parser.add_argument("--no-digits", action="store_true")
    parser.add_argument("--no-toys", action="store_true", help="digits only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable on a shared CPU)")
    parser.add_argument("--out", default=str(HERE / "out" / "density.md"))
    args = parser.parse_args(argv)

    steps = args.steps or (200 if args.quick else 2000)
    digits_steps = args.digits_steps or (200 if args.quick else 1500)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2, 3])
    digits_seeds = args.digits_seeds or seeds[:1]
    toys = [] if args.no_toys else args.toys or (("8gaussians", "checkerboard") if args.quick else TOYS)
    if args.no_toys and args.no_digits:
        parser.error("--no-toys with --no-digits leaves nothing to fit")
    if digits_steps % DIGITS_EVAL_EVERY:
        parser.error(f"--digits-steps must be a multiple of {DIGITS_EVAL_EVERY}")
    starts = list(dict.fromkeys(args.output_init))
    from pyroflows.nn.mlp import output_init_bound

    for start in starts:
        try:
            output_init_bound(output_init(start), 1)
        except ValueError as err:
            parser.error(f"--output-init {start!r}: {err}")

    global AFFINE_SCALE, RANDPERM
    AFFINE_SCALE, RANDPERM = args.affine_scale, args.randperm
    import torch

    torch.set_num_threads(args.threads)
    from common import machine_info

    t_start = time.perf_counter()
    run = Run()
    print(f"toys {list(toys)}: {steps} steps of batch {BATCH}; seeds {seeds}; pairs {args.pairs}; our output_init "
          f"{starts}; our MAF's affine scale {AFFINE_SCALE}; randperm {RANDPERM}", flush=True)
    true_ll = {}
    for toy in toys:
        task = toy_task(toy)
        true_ll[toy] = task.true_ll
        for seed in seeds:
            fit_all(run, args.pairs, args.kinds, starts, task, steps, seed)
    baselines = {}
    if not args.no_digits:
        task = digits_task()
        print(f"digits: {DIGITS_SPLIT} train/val/test, {digits_steps} steps of batch {DIGITS_BATCH}", flush=True)
        for seed in digits_seeds:
            fit_all(run, args.pairs, args.kinds, starts, task, digits_steps, seed)
        rng = np.random.default_rng(1)
        deq_train = (task.train + rng.uniform(size=task.train.shape)) / DIGITS_LEVELS
        baselines["Gaussian (full cov.)"] = gaussian_ll(deq_train, task.test)
        baselines["uniform on [0,1)^64"] = 0.0

    info = machine_info("cpu", ("pyroflows", "torch", "zuko", "jax", "numpyro", "flowjax", "optax"))
    total = time.perf_counter() - t_start
    sections = [toy_tables(run, args.pairs, toys, args.kinds, starts, seeds, true_ll)] if toys else []
    if toys and len(starts) > 1:
        sections.append(start_table(run, args.pairs, toys, args.kinds, starts))
    if not args.no_digits:
        sections.append(digits_table(run, args.pairs, args.kinds, starts, digits_seeds, baselines))
    header = (f"## Density benchmark (`benchmarks/density.py`{' --quick' if args.quick else ''})\n\n"
              f"Toys: {steps} steps, batch {BATCH}; digits: {digits_steps} steps, batch {DIGITS_BATCH}, best of "
              f"validation every {DIGITS_EVAL_EVERY}. Adam lr {LR} cosine to 0, clip {CLIP}; identical hand loops "
              f"within each pair. MAF/NSF: {NUM_TRANSFORMS} layers, hidden {HIDDEN}, NSF {COUNT_BINS} bins on "
              f"[-{BOUND:g}, {BOUND:g}]; our output_init {starts}, MAF affine scale {AFFINE_SCALE}, randperm "
              f"{RANDPERM}. Total wall time {total / 60:.1f} min; torch threads {args.threads}.\n\n"
              f"Machine: {info['cpu_model']}, {info['usable_cores']} usable cores, load {info['load_average_1_5_15']}; "
              + ", ".join(f"{k} {v}" for k, v in sorted(info.get("versions", {}).items())))
    text = header + "\n\n" + "\n\n".join(sections) + "\n"
    print("\n" + text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"written to {args.out}")
    return 0 if all(r.status == "ok" for r in run.results if r.library in ("pyroflows", "numpyroflows")) else 1


if __name__ == "__main__":
    sys.exit(main())
