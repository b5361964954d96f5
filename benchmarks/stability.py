"""Stability sweep: does an AutoFlowGuide's SVI run ever get worse once it has improved?

Usage::

    python benchmarks/stability.py [--backend pyro numpyro] [--flows iaf nsf ...] [--posteriors kidiq ...]
                                   [--steps 2000] [--seeds 1] [--json out.json] [--quick]

For every backend, posterior (:mod:`models`), flow name of ``FLOWS`` and SVI setting of the grid (Adam, and
ClippedAdam clipping gradients at 10; learning rate 1e-3, 5e-3, 1e-2; 1 and 8 particles of ``Trace_ELBO``), one
run of ``--steps`` steps from the guide's default start records the loss. The run is cut into 20 windows; each
window's mean loss has a Monte Carlo standard error (window sd / sqrt(window length)). A run **diverges** where a
loss is not finite, or where a window's mean exceeds the best earlier window mean by more than 3 standard errors of
the two (the issue's rule: once improved, the running mean must not get worse by more than its Monte Carlo noise)
plus 0.5 nats, a floor for the noise of ELBO estimates that a window sd understates on heavy-tailed posteriors.
The report lists each divergence and counts them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from common import machine_info
from models import POSTERIORS, Posterior

OPTIMIZERS = ("Adam", "ClippedAdam")
RATES = (1e-3, 5e-3, 1e-2)
PARTICLES = (1, 8)
WINDOWS = 20
SIGMAS, FLOOR = 3.0, 0.5


def verdict(losses: np.ndarray) -> str | None:
    """``None`` for a stable run, else why it diverged (see the module docstring)."""
    if not np.all(np.isfinite(losses)):
        return f"non-finite loss at step {int(np.argmin(np.isfinite(losses)))}"
    windows = np.array_split(losses, WINDOWS)
    means = np.array([w.mean() for w in windows])
    errs = np.array([w.std() / math.sqrt(len(w)) for w in windows])
    best = 0
    for i in range(1, WINDOWS):
        if means[i] > means[best] + SIGMAS * math.hypot(errs[i], errs[best]) + FLOOR:
            return f"window {i} mean {means[i]:.4g} > best {means[best]:.4g} (window {best})"
        if means[i] < means[best]:
            best = i
    return None


def run_pyro(post: Posterior, flow: str, opt: str, lr: float, particles: int, steps: int, seed: int) -> np.ndarray:
    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO

    from pyroflows import AutoFlowGuide, run_svi

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    torch.set_default_dtype(torch.float64)
    try:
        optim = (pyro.optim.ClippedAdam({"lr": lr, "clip_norm": 10.0}) if opt == "ClippedAdam"
                 else pyro.optim.Adam({"lr": lr}))
        guide = AutoFlowGuide(post.pyro_model, flow)
        svi = SVI(post.pyro_model, guide, optim, Trace_ELBO(num_particles=particles,
                                                            vectorize_particles=particles > 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            losses = run_svi(svi, num_steps=steps, progress=False).losses.numpy()
    finally:
        torch.set_default_dtype(torch.float32)
    return np.concatenate([losses, [np.nan]]) if len(losses) < steps else losses  # run_svi stops at a NaN


def run_numpyro(post: Posterior, flow: str, opt: str, lr: float, particles: int, steps: int, seed: int) -> np.ndarray:
    import jax
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO

    from numpyroflows import AutoFlowGuide

    optim = numpyro.optim.ClippedAdam(lr, clip_norm=10.0) if opt == "ClippedAdam" else numpyro.optim.Adam(lr)
    guide = AutoFlowGuide(post.numpyro_model, flow)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = SVI(post.numpyro_model, guide, optim, Trace_ELBO(num_particles=particles)).run(
            jax.random.key(seed), steps, progress_bar=False)
    return np.asarray(result.losses, np.float64)


BACKENDS = {"pyro": run_pyro, "numpyro": run_numpyro}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from flowcommon.guide import FLOW_RECIPES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", nargs="+", choices=list(BACKENDS), default=list(BACKENDS))
    p.add_argument("--flows", nargs="+", choices=list(FLOW_RECIPES), default=list(FLOW_RECIPES))
    p.add_argument("--posteriors", nargs="+", choices=list(POSTERIORS), default=list(POSTERIORS))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke test: the default flow, 200 steps, lr 1e-2 only")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.rates = RATES
    if args.quick:
        args.flows, args.steps, args.rates = ["iaf"], 200, (1e-2,)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info("cpu", ("pyroflows", "torch", "pyro-ppl", "jax", "numpyro", "optax"))
    print(f"stability sweep  {info['date_utc']}  {info['cpu_model']}, {info['usable_cores']} cores; "
          f"{args.steps} steps, {args.seeds} seed(s)", flush=True)
    records, diverged = [], 0
    for backend in args.backend:
        for key in args.posteriors:
            post = POSTERIORS[key]()
            for flow in args.flows:
                for opt in OPTIMIZERS:
                    for lr in args.rates:
                        for particles in PARTICLES:
                            for seed in range(args.seeds):
                                try:
                                    why = verdict(BACKENDS[backend](post, flow, opt, lr, particles, args.steps, seed))
                                except Exception as err:  # a failing build is a result too
                                    why = f"error: {type(err).__name__}: {err}"
                                records.append({"backend": backend, "posterior": post.name, "flow": flow,
                                                "optimizer": opt, "lr": lr, "particles": particles, "seed": seed,
                                                "diverged": why})
                                if why:
                                    diverged += 1
                                    print(f"  DIVERGED {backend} {post.name} {flow} {opt}({lr}) x{particles} "
                                          f"seed {seed}: {why}", flush=True)
            print(f"{backend} {post.name}: done", flush=True)
    print(f"{diverged} of {len(records)} runs diverged")
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": info, "steps": args.steps, "runs": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
