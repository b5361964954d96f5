"""Normalizing flows on 2-D problems: density estimation on the FFJORD toys and variational fits of Rezende-Mohamed
energies, in Pyro (pyroflows) or NumPyro (numpyroflows).

1. Maximum likelihood. For each toy density of ``data2d`` (moons, 8gaussians, checkerboard, pinwheel, 2spirals,
   rings; 20,000 training points, an independent held-out draw of 5,000) fit five flows with ``fit`` at the same
   budget: MAF (affine autoregressive), NSF (spline autoregressive), RealNVP (affine coupling), NICE (additive
   coupling and a diagonal scaling) and NSF-C (spline coupling), each 5 layers with networks of hidden layers
   (64, 64). Print the held-out log-likelihood in nats per point (higher is better) next to a full-covariance
   Gaussian and, for 8gaussians and checkerboard, the true density. ``fit`` runs 2000 steps of batch 512 at
   learning rate 2e-3 with its defaults otherwise (10% validation split, early stopping, best parameters kept).
2. Reverse KL. Fit four flows that sample and score their own samples in one pass (IAF; IAF with spline transformers,
   i.e. NSF in IAF orientation; planar and radial flows, 16 layers each) to the energies ``U1``-``U4`` of Rezende &
   Mohamed (2015), ``p(z) ∝ exp(-U(z))``, by maximizing ``ELBO = E_q[-U(z) - log q(z)]`` with reparameterized draws
   from ``rsample_and_log_prob`` / ``sample_and_log_prob`` (Adam, 2000 steps of 512 draws, the learning rate of
   :data:`VI_FLOWS` decayed to 0 by a cosine, gradients clipped at norm 10). ``log Z - ELBO = KL(q || p) >= 0``
   (smaller is better), with ``log Z`` from ``data2d.ENERGY_LOG_Z``. U1 is normalizable on the plane, and the flow
   lives on the plane. U2-U4 are not (``exp(-U)`` does not decay along ``z0``), so their ``log Z`` is defined on the
   box ``[-4, 4]²`` only; a flow on the plane would put mass outside it, and its ELBO could even exceed the box's
   ``log Z`` by spreading along ``z0``. We make the comparison exact instead: for U2-U4 the flow's sample ``y`` is
   mapped into the box by ``z = 4 tanh(y)`` (with its log-Jacobian), so ``q`` is a density on the box and the gap is
   exactly ``KL(q || p_box)``. The first 30% of the steps anneal the energy (``β U`` with ``β`` rising linearly from
   0.01 to 1, as Rezende & Mohamed do) so that the fits do not lock onto one mode early. Also printed: the
   importance-sampling estimate ``log mean exp(-U - log q)`` of ``log Z``, a check of the reference that needs no
   grid (below ``log Z`` on average, and close to it when ``q`` covers the target).
3. A figure (rows: toys and energies; columns: data or the true density, then each flow's learned density) in
   ``examples/out/density_2d_<backend>.png`` and the tables in ``examples/out/density_2d_<backend>.md``.

Run from the repository root::

    python examples/density_2d.py [--backend pyro|numpyro] [--quick] [--steps N] [--vi-steps N] [--seed S]
                                  [--toys rings ...] [--energies U1 ...]

The default run takes a few minutes on two CPU cores; ``--quick`` (two toys, two energies, few steps) well under one.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed; must come before pyplot is imported

import data2d  # noqa: E402  (examples/data2d.py, next to this file)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")

TOYS = ("moons", "8gaussians", "checkerboard", "pinwheel", "2spirals", "rings")
ENERGIES = ("U1", "U2", "U3", "U4")
N_TRAIN, N_TEST = 20_000, 5_000
BATCH, LR = 512, 2e-3  # maximum likelihood: batch and learning rate of ``fit``
VI_BATCH, ANNEAL = 512, 0.3  # reverse KL: draws per step, annealed fraction of the steps
N_EVAL = 20_000  # draws for the final ELBO and log Z estimates
LIM, GRID = 4.0, 200  # plots: [-LIM, LIM]^2 on a GRID x GRID lattice of cell midpoints
#: A held-out point with a log-density below this (nats) is reported: on these toys the true log-densities lie above
#: -10, and a single point far below can dominate the mean (an affine layer with a scale near its floor of 1e-3 maps
#: points just outside the training support to |z| in the thousands: a cliff in the learned density, not a bug).
OUTLIER_LP = -50.0

#: Maximum-likelihood flows: display name -> (recipe, arguments). Same names and arguments in both packages.
ML_FLOWS: dict[str, tuple[str, dict]] = {
    "MAF": ("MAF", {"num_transforms": 5, "hidden_dims": (64, 64)}),
    "NSF": ("NSF", {"num_transforms": 5, "hidden_dims": (64, 64), "count_bins": 8, "bound": 5.0}),
    "RealNVP": ("RealNVP", {"num_transforms": 5, "hidden_dims": (64, 64)}),
    "NICE": ("NICE", {"num_transforms": 5, "hidden_dims": (64, 64)}),
    "NSF-C": ("Coupling", {"num_transforms": 5, "hidden_dims": (64, 64), "transformer": "spline", "count_bins": 8,
                           "bound": 5.0}),
}
#: Reverse-KL flows, fast to sample and to score their own samples: name -> (recipe, arguments, peak learning rate).
#: The learning rates were picked from {2e-3, 5e-3, 1e-2} on U1 and U3 (2000 steps, Pyro): planar and radial layers
#: have few parameters each and need the larger step (from 2e-3 to 1e-2 their gaps fell from 0.38-1.04 nats to
#: 0.02-0.67); the IAFs do best at 5e-3.
VI_FLOWS: dict[str, tuple[str, dict, float]] = {
    "IAF": ("IAF", {"num_transforms": 5, "hidden_dims": (64, 64)}, 5e-3),
    "IAF-spline": ("IAF", {"num_transforms": 5, "hidden_dims": (64, 64), "transformer": "spline", "count_bins": 8,
                           "bound": 5.0}, 5e-3),
    "Planar": ("Planar", {"num_transforms": 16}, 1e-2),
    "Radial": ("Radial", {"num_transforms": 16}, 1e-2),
}


def beta_schedule(steps: int) -> np.ndarray:
    """Inverse temperature of each step: linear from 0.01 to 1 over the first ``ANNEAL`` of the steps, then 1."""
    ramp = max(1, int(ANNEAL * steps))
    return np.minimum(1.0, 0.01 + 0.99 * np.arange(steps) / ramp).astype(np.float32)


def cosine_lr(step: int, steps: int, lr: float) -> float:
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def grid_points() -> tuple[np.ndarray, np.ndarray]:
    """Cell midpoints of ``[-LIM, LIM]²``: the 1-D coordinates and the ``(GRID², 2)`` points (row-major in ``z1``)."""
    g = np.linspace(-LIM, LIM, GRID + 1)
    g = 0.5 * (g[1:] + g[:-1])
    pts = np.stack(np.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    return g, pts.astype(np.float32)


@dataclass
class MLResult:
    toy: str
    flow: str
    ll: float
    seconds: float
    steps: int
    density: np.ndarray  # (GRID, GRID) on the plot grid
    message: str = ""
    outliers: np.ndarray | None = None  # held-out log-densities below OUTLIER_LP
    ll_without: float = float("nan")  # the mean without them


@dataclass
class VIResult:
    energy: str
    flow: str
    elbo: float
    elbo_se: float
    log_z_is: float
    seconds: float
    density: np.ndarray
    dropped: int = 0  # draws whose log-weight was not finite (left out of the estimates)

    @property
    def gap(self) -> float:
        return data2d.ENERGY_LOG_Z[self.energy] - self.elbo


# =====================================================================================================================
# Backends: the same experiment with pyroflows (torch) and numpyroflows (JAX)
# =====================================================================================================================
class PyroBackend:
    """pyroflows: flows are torch modules, ``pyroflows.fit`` trains them in place, reverse KL is a torch loop."""

    name = "pyro"

    def __init__(self) -> None:
        import torch

        import pyroflows

        torch.set_num_threads(1)  # tiny networks: one thread is as fast and keeps timings stable on a shared CPU
        self.torch, self.pf = torch, pyroflows

    def build(self, spec: tuple[str, dict], seed: int):
        self.torch.manual_seed(seed)
        recipe, kwargs = spec
        return getattr(self.pf.flows, recipe)(2, **kwargs)

    def fit(self, flow, x: np.ndarray, steps: int, seed: int):
        flow, history = self.pf.fit(flow, x, batch_size=BATCH, max_steps=steps, lr=LR, progress=False, seed=seed)
        return flow, history

    def log_prob(self, flow, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.no_grad():
            d = flow()
            return np.concatenate([d.log_prob(torch.from_numpy(c)).numpy() for c in np.array_split(x, 10)])

    def energy(self, name: str, z):
        return data2d.ENERGIES[name](z)

    def squash(self, y, log_q, box: float | None):
        """``z = box · tanh(y)`` and the log-density of ``z`` (identity when ``box`` is None)."""
        if box is None:
            return y, log_q
        F = self.torch.nn.functional
        log_jac = (math.log(box) + 2.0 * (math.log(2.0) - y - F.softplus(-2.0 * y))).sum(-1)
        return box * self.torch.tanh(y), log_q - log_jac

    def reverse_kl(self, spec: tuple[str, dict, float], energy: str, steps: int, seed: int) -> tuple[Any, dict]:
        torch = self.torch
        flow = self.build(spec[:2], seed)
        box = data2d.ENERGY_DOMAIN[energy]
        opt = torch.optim.Adam(flow.parameters(), lr=spec[2])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: cosine_lr(t, steps, 1.0))
        betas = torch.from_numpy(beta_schedule(steps))
        for step in range(steps):
            y, log_q = flow().rsample_and_log_prob((VI_BATCH,))  # one forward pass: draws and their log-density
            z, log_q = self.squash(y, log_q, box)
            loss = (log_q + betas[step] * self.energy(energy, z)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
            opt.step()
            sched.step()
        with torch.no_grad():
            y, log_q = flow().rsample_and_log_prob((N_EVAL,))
            z, log_q = self.squash(y, log_q, box)
            log_w = (-self.energy(energy, z) - log_q).double().numpy()
        return flow, {"log_w": log_w}

    def vi_log_density(self, flow, energy: str, pts: np.ndarray) -> np.ndarray:
        """``log q(z)`` on the grid: the flow's density of ``atanh(z / box)`` with the Jacobian, for boxed energies."""
        box = data2d.ENERGY_DOMAIN[energy]
        if box is None:
            return self.log_prob(flow, pts)
        y = np.arctanh(pts / box).astype(np.float32)
        return self.log_prob(flow, y) - np.log(box * (1.0 - (pts / box) ** 2)).sum(-1)


class NumPyroBackend:
    """numpyroflows: flows are pytrees, ``numpyroflows.fit`` returns the trained flow, reverse KL is one jitted scan."""

    name = "numpyro"

    def __init__(self) -> None:
        import jax
        import jax.numpy as jnp
        import optax

        import numpyroflows

        self.jax, self.jnp, self.optax, self.nf = jax, jnp, optax, numpyroflows
        self._vi_cache: dict = {}
        self._log_prob = jax.jit(lambda flow, x: flow().log_prob(x))  # compiled once per flow type and shape

    def build(self, spec: tuple[str, dict], seed: int):
        recipe, kwargs = spec
        return getattr(self.nf.flows, recipe)(2, **kwargs, key=self.jax.random.PRNGKey(seed))

    def fit(self, flow, x: np.ndarray, steps: int, seed: int):
        return self.nf.fit(flow, x, batch_size=BATCH, max_steps=steps, lr=LR, progress=False, seed=seed)

    def log_prob(self, flow, x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(self._log_prob(flow, self.jnp.asarray(c))) for c in np.array_split(x, 10)])

    def _vi_functions(self, steps: int):
        """Jitted ``train(flow, key, lr, energy_index, boxed)`` and ``log_weights(...)``. The flow is an argument and
        the energy a traced index (``lax.switch``), so one compilation serves every energy and seed of a flow type."""
        if steps in self._vi_cache:
            return self._vi_cache[steps]
        jax, jnp, optax = self.jax, self.jnp, self.optax
        energies = [lambda z, u=data2d.ENERGIES[e]: u(z, jnp) for e in ENERGIES]
        box = data2d.ENERGY_BOX

        def squash(y, log_q, boxed):  # z = box tanh(y) for the boxed energies, z = y for U1
            log_jac = (math.log(box) + 2.0 * (math.log(2.0) - y - jax.nn.softplus(-2.0 * y))).sum(-1)
            return jnp.where(boxed, box * jnp.tanh(y), y), log_q - jnp.where(boxed, log_jac, 0.0)

        def draws(flow, key, n, energy_index, boxed):
            y, log_q = flow().sample_and_log_prob(key, (n,))  # one forward pass: draws and their log-density
            z, log_q = squash(y, log_q, boxed)
            return jax.lax.switch(energy_index, energies, z), log_q

        @jax.jit
        def train(flow, key, lr, energy_index, boxed):
            opt = optax.chain(optax.clip_by_global_norm(10.0),
                              optax.adam(lambda t: 0.5 * lr * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t, steps) / steps))))

            def loss(params, key, beta):
                u, log_q = draws(flow.with_params(params), key, VI_BATCH, energy_index, boxed)
                return jnp.mean(log_q + beta * u)

            def step(carry, inp):
                params, state = carry
                grad = jax.grad(loss)(params, *inp)
                updates, state = opt.update(grad, state, params)
                return (optax.apply_updates(params, updates), state), None

            keys = jax.random.split(key, steps)
            init = (flow.params, opt.init(flow.params))
            (params, _), _ = jax.lax.scan(step, init, (keys, jnp.asarray(beta_schedule(steps))))
            return flow.with_params(params)

        @jax.jit
        def log_weights(flow, key, energy_index, boxed):
            u, log_q = draws(flow, key, N_EVAL, energy_index, boxed)
            return -u - log_q

        self._vi_cache[steps] = (train, log_weights)
        return train, log_weights

    def reverse_kl(self, spec: tuple[str, dict, float], energy: str, steps: int, seed: int) -> tuple[Any, dict]:
        jax = self.jax
        train, log_weights = self._vi_functions(steps)
        flow = self.build(spec[:2], seed)
        index, boxed = ENERGIES.index(energy), data2d.ENERGY_DOMAIN[energy] is not None
        key = jax.random.PRNGKey(seed)
        flow = train(flow, key, spec[2], index, boxed)
        log_w = log_weights(flow, jax.random.fold_in(key, 1), index, boxed)
        return flow, {"log_w": np.asarray(log_w, dtype=np.float64)}

    def vi_log_density(self, flow, energy: str, pts: np.ndarray) -> np.ndarray:
        box = data2d.ENERGY_DOMAIN[energy]
        if box is None:
            return self.log_prob(flow, pts)
        y = np.arctanh(pts / box).astype(np.float32)
        return self.log_prob(flow, y) - np.log(box * (1.0 - (pts / box) ** 2)).sum(-1)


BACKENDS: dict[str, Callable[[], Any]] = {"pyro": PyroBackend, "numpyro": NumPyroBackend}


# =====================================================================================================================
# The experiments
# =====================================================================================================================
def gaussian_ll(train: np.ndarray, test: np.ndarray) -> float:
    """Held-out log-likelihood of the maximum-likelihood full-covariance Gaussian of the training data."""
    mean, cov = train.mean(0), np.cov(train.T, bias=True)
    diff = test - mean
    sol = np.linalg.solve(cov, diff.T).T
    return float(np.mean(-0.5 * (diff * sol).sum(1)) - 0.5 * np.log(np.linalg.det(cov)) - math.log(2 * math.pi))


def run_ml(backend, toys: Sequence[str], flows: Sequence[str], steps: int, seed: int, pts: np.ndarray
           ) -> list[MLResult]:
    results = []
    for toy in toys:
        train = data2d.sample(toy, N_TRAIN, seed=seed)
        test = data2d.sample(toy, N_TEST, seed=seed + 1000)  # held out: an independent draw
        for name in flows:
            t0 = time.perf_counter()
            flow = backend.build(ML_FLOWS[name], seed)
            flow, history = backend.fit(flow, train, steps, seed)
            seconds = time.perf_counter() - t0
            lp = backend.log_prob(flow, test)
            ll = float(np.mean(lp))
            density = np.exp(backend.log_prob(flow, pts)).reshape(GRID, GRID)
            note = {"max_steps": "", "early_stopping": " (early stopping)"}.get(history.stopped,
                                                                          f" ({history.stopped}: {history.message})")
            res = MLResult(toy, name, ll, seconds, history.num_steps, density, note)
            low = lp < OUTLIER_LP
            if low.any():
                res.outliers, res.ll_without = np.sort(lp[low]), float(np.mean(lp[~low]))
                note += (f"  [{low.sum()} held-out point(s) below {OUTLIER_LP:g} nats, lowest {lp.min():.3g}; "
                         f"mean without them {res.ll_without:.3f}]")
            results.append(res)
            print(f"  {toy:<12} {name:<8} held-out LL {ll:8.3f}   best step {history.best_step:5d}/"
                  f"{history.num_steps}   {seconds:5.1f} s{note}", flush=True)
    return results


def run_vi(backend, energies: Sequence[str], flows: Sequence[str], steps: int, seed: int, pts: np.ndarray
           ) -> list[VIResult]:
    results = []
    for energy in energies:
        for name in flows:
            t0 = time.perf_counter()
            flow, out = backend.reverse_kl(VI_FLOWS[name], energy, steps, seed)
            seconds = time.perf_counter() - t0
            finite = np.isfinite(out["log_w"])
            log_w = out["log_w"][finite]
            elbo, se = float(log_w.mean()), float(log_w.std() / math.sqrt(len(log_w)))
            m = log_w.max()
            log_z_is = float(m + np.log(np.mean(np.exp(log_w - m))))
            density = np.exp(backend.vi_log_density(flow, energy, pts)).reshape(GRID, GRID)
            res = VIResult(energy, name, elbo, se, log_z_is, seconds, density, int((~finite).sum()))
            results.append(res)
            note = f"   ({res.dropped} non-finite log-weights left out)" if res.dropped else ""
            print(f"  {energy}  {name:<10}  ELBO {elbo:7.3f} ± {se:.3f}   log Z - ELBO {res.gap:6.3f}   "
                  f"IS log Z {log_z_is:6.3f} (ref {data2d.ENERGY_LOG_Z[energy]:.3f})   {seconds:5.1f} s{note}",
                  flush=True)
    return results


# =====================================================================================================================
# Output: tables and figure
# =====================================================================================================================
def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def ml_table(results: list[MLResult], toys: Sequence[str], flows: Sequence[str], baselines: dict) -> str:
    rows, notes = [], []
    for toy in toys:
        by = {r.flow: r for r in results if r.toy == toy}
        best = max(by[f].ll for f in flows)
        cells = [f"**{by[f].ll:.3f}**" if by[f].ll == best else f"{by[f].ll:.3f}" for f in flows]
        for i, f in enumerate(flows):
            if by[f].outliers is not None:
                cells[i] += f" ({by[f].ll_without:.3f}†)"
                notes.append(f"{f} on {toy}: {len(by[f].outliers)} of {N_TEST} held-out points have log-density "
                             f"below {OUTLIER_LP:g} nats (lowest {by[f].outliers[0]:.3g}); in brackets the mean "
                             f"without them.")
        gauss, true = baselines[toy]
        rows.append([toy, *cells, f"{gauss:.3f}", "-" if true != true else f"{true:.3f}"])
    table = md_table(["toy", *flows, "Gaussian", "true density"], rows)
    return table + "".join(f"\n\n† {n}" for n in notes)


def vi_table(results: list[VIResult], energies: Sequence[str], flows: Sequence[str]) -> str:
    rows = []
    for energy in energies:
        by = {r.flow: r for r in results if r.energy == energy}
        cells = [f"{by[f].gap:.3f} (ELBO {by[f].elbo:.3f} ± {by[f].elbo_se:.3f}; IS {by[f].log_z_is:.3f})"
                 for f in flows]
        domain = "plane" if data2d.ENERGY_DOMAIN[energy] is None else "box [-4, 4]²"
        rows.append([energy, f"{data2d.ENERGY_LOG_Z[energy]:.3f} ({domain})", *cells])
    return md_table(["energy", "log Z", *flows], rows)


def plot(path: str, ml: list[MLResult], vi: list[VIResult], toys: Sequence[str], energies: Sequence[str],
         ml_flows: Sequence[str], vi_flows: Sequence[str], seed: int, g: np.ndarray, pts: np.ndarray) -> None:
    cols = 1 + max(len(ml_flows), len(vi_flows))
    rows = len(toys) + len(energies)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    show = {"cmap": "viridis", "shading": "auto"}
    for i, toy in enumerate(toys):
        x = data2d.sample(toy, N_TEST, seed=seed + 1000)
        axes[i, 0].hist2d(x[:, 0], x[:, 1], bins=100, range=[[-LIM, LIM], [-LIM, LIM]], cmap="viridis")
        axes[i, 0].set_title(f"{toy}: held-out data", fontsize=8)
        for j, name in enumerate(ml_flows, start=1):
            r = next(r for r in ml if r.toy == toy and r.flow == name)
            axes[i, j].pcolormesh(g, g, r.density, **show)
            axes[i, j].set_title(f"{name}: LL {r.ll:.2f}", fontsize=8)
        for j in range(len(ml_flows) + 1, cols):
            axes[i, j].axis("off")
    for i, energy in enumerate(energies, start=len(toys)):
        target = np.exp(-data2d.ENERGIES[energy](pts.astype(np.float64), np)).reshape(GRID, GRID)
        axes[i, 0].pcolormesh(g, g, target, **show)
        axes[i, 0].set_title(f"{energy}: exp(-U)", fontsize=8)
        for j, name in enumerate(vi_flows, start=1):
            r = next(r for r in vi if r.energy == energy and r.flow == name)
            axes[i, j].pcolormesh(g, g, r.density, **show)
            axes[i, j].set_title(f"{name}: gap {r.gap:.3f}", fontsize=8)
        for j in range(len(vi_flows) + 1, cols):
            axes[i, j].axis("off")
    for ax in axes.ravel():
        ax.set_xlim(-LIM, LIM)
        ax.set_ylim(-LIM, LIM)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Flows on 2-D toys (maximum likelihood) and energies (reverse KL).")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="pyro")
    parser.add_argument("--quick", action="store_true", help="two toys, two energies, few steps (under a minute)")
    parser.add_argument("--steps", type=int, default=None, help="maximum-likelihood steps per fit (default 2000)")
    parser.add_argument("--vi-steps", type=int, default=None, help="reverse-KL steps per fit (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--toys", nargs="+", choices=TOYS, default=None, help="toy data sets (default: all six)")
    parser.add_argument("--energies", nargs="+", choices=ENERGIES, default=None, help="energies (default: all four)")
    args = parser.parse_args(argv)
    steps = args.steps or (150 if args.quick else 2000)
    vi_steps = args.vi_steps or (150 if args.quick else 2000)
    toys = args.toys or (("8gaussians", "moons") if args.quick else TOYS)
    energies = args.energies or (("U1", "U2") if args.quick else ENERGIES)
    ml_flows, vi_flows = list(ML_FLOWS), list(VI_FLOWS)

    os.makedirs(OUT_DIR, exist_ok=True)
    backend = BACKENDS[args.backend]()
    g, pts = grid_points()
    t0 = time.perf_counter()

    print(f"\n1. Maximum likelihood ({args.backend}): {N_TRAIN} training points, {N_TEST} held out, fit() with "
          f"{steps} steps of {BATCH}, lr {LR}")
    ml = run_ml(backend, toys, ml_flows, steps, args.seed, pts)
    baselines = {}
    for toy in toys:
        train, test = data2d.sample(toy, N_TRAIN, seed=args.seed), data2d.sample(toy, N_TEST, seed=args.seed + 1000)
        exact = data2d.LOG_PROBS.get(toy)
        baselines[toy] = (gaussian_ll(train, test), float(np.mean(exact(test))) if exact else float("nan"))

    print(f"\n2. Reverse KL ({args.backend}): {vi_steps} Adam steps of {VI_BATCH} draws, lr per flow (cosine to 0), "
          f"energy annealed over the first {ANNEAL:.0%}; {N_EVAL} draws for the final estimates")
    vi = run_vi(backend, energies, vi_flows, vi_steps, args.seed, pts)
    total = time.perf_counter() - t0

    table1 = ml_table(ml, toys, ml_flows, baselines)
    table2 = vi_table(vi, energies, vi_flows)
    times1 = ", ".join(f"{f} {np.mean([r.seconds for r in ml if r.flow == f]):.1f}" for f in ml_flows)
    times2 = ", ".join(f"{f} {np.mean([r.seconds for r in vi if r.flow == f]):.1f}" for f in vi_flows)
    text = (f"# density_2d.py, backend {args.backend}{' (--quick)' if args.quick else ''}\n\n"
            f"Seed {args.seed}; total wall time {total / 60:.1f} min.\n\n"
            f"## Held-out log-likelihood (nats per point, higher is better)\n\n"
            f"{N_TRAIN} training and {N_TEST} held-out points; `fit` with {steps} steps of batch {BATCH}, lr {LR}, "
            f"default validation split and early stopping; every flow 5 layers with hidden (64, 64).\n\n{table1}\n\n"
            f"Seconds per fit (mean over toys; JAX: compilation included): {times1}.\n\n"
            f"## Reverse KL on the Rezende-Mohamed energies: log Z - ELBO (nats, >= 0, smaller is better)\n\n"
            f"{vi_steps} steps of {VI_BATCH} draws, Adam at peak lr "
            f"{', '.join(f'{k} {v[2]:g}' for k, v in VI_FLOWS.items())} (cosine to 0), energy annealed over the "
            f"first {ANNEAL:.0%}; ELBO ± its standard error and the importance-sampling log Z "
            f"from {N_EVAL} draws. U2-U4: flow mapped into the box by 4 tanh (exact KL to the box-restricted "
            f"target).\n\n{table2}\n\nSeconds per fit (mean over energies): {times2}.\n")
    print("\n" + text)
    md_path = os.path.join(OUT_DIR, f"density_2d_{args.backend}.md")
    png_path = os.path.join(OUT_DIR, f"density_2d_{args.backend}.png")
    with open(md_path, "w") as f:
        f.write(text)
    plot(png_path, ml, vi, toys, energies, ml_flows, vi_flows, args.seed, g, pts)
    print(f"written: {md_path}, {png_path}")


if __name__ == "__main__":
    main()
