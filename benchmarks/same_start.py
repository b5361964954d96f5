"""numpyroflows' MAF started from FlowJAX's initial weights: the same function, and the same fit.

Usage::

    python benchmarks/same_start.py [--toy 2spirals] [--seeds 0 1 ...] [--steps 2000] [--quick]

Why. ``density.py`` finds the affine MAF behind FlowJAX's on the hardest 2-D toys (2spirals and rings) by a few
hundredths of a nat. This script separates the two possible causes: the flow (its function, its gradients) or where
it starts. For each seed it builds FlowJAX's ``masked_autoregressive_flow`` on a 2-D toy with ``density.py``'s
architecture (5 layers, hidden (64, 64), ReLU) and copies its initial weights into ``numpyroflows.flows.MAF`` with
FlowJAX's affine transformer (``transformer={"name": "affine", "scale": "softplus", "min_scale": 1e-2}``: FlowJAX's
floor; ours is 1e-3 by default). It checks that both compute the same ``log_prob`` at the start, then
trains both with ``density.py``'s loop (same mini-batches, Adam 1e-3 with a cosine decay, clipping at 5, 2000 steps)
and reports the held-out log-likelihoods:

* ``ours from FlowJAX's start - FlowJAX``: the flows themselves; near zero if they are the same model;
* ``ours from its own start - FlowJAX``: ``MAF(2)`` as the library builds it (the ``exp`` scale, output weights at
  ±1e-3 so that it starts at the identity), the comparison of ``density.py``.

The weight map (D = 2, an odd number of layers): FlowJAX applies its layers data side first, each followed by a flip
of the two coordinates, so its layer ``k`` is our ``transforms[L-1-k]`` (ours are listed noise side first), whose
variable order is reversed for odd ``k`` as the flips make FlowJAX's; for those the first layer's input columns are
swapped. FlowJAX's outputs are dimension-major ``(d, [loc, scale])``, ours parameter-major ``([shift, scale], d)``.
Requires FlowJAX (``pip install -e ".[peers]"``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import density  # noqa: E402

FLOWJAX_MIN_SCALE = 1e-2  # flowjax.flows._affine_with_min_scale


def flowjax_maf(seed: int):
    """FlowJAX's MAF as ``density.py`` builds it: (trainable params, static part)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import paramax
    from flowjax.distributions import Normal
    from flowjax.flows import masked_autoregressive_flow

    flow = masked_autoregressive_flow(jax.random.PRNGKey(seed), base_dist=Normal(jnp.zeros(2)),
                                      flow_layers=density.NUM_TRANSFORMS, nn_width=density.HIDDEN[0],
                                      nn_depth=len(density.HIDDEN), invert=True)
    return eqx.partition(flow, eqx.is_inexact_array, is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))


def copy_weights(params, static) -> dict:
    """numpyroflows MAF parameters holding the weights of FlowJAX's MAF ``(params, static)`` (see the docstring)."""
    import equinox as eqx
    import jax.numpy as jnp
    import paramax

    flow = paramax.unwrap(eqx.combine(params, static))
    try:
        mlp = flow.bijection.bijection.bijection.bijections[0].masked_autoregressive_mlp
    except AttributeError as err:  # Invert(Scan(Chain([MaskedAutoregressive, Flip])))
        raise RuntimeError("unexpected FlowJAX MAF structure; this script was written for flowjax 19") from err
    num = density.NUM_TRANSFORMS
    if num % 2 == 0:
        raise ValueError("the weight map needs an odd number of layers")
    out = {}
    for k in range(num):
        ws = [np.asarray(layer.weight[k]) for layer in mlp.layers]
        bs = [np.asarray(layer.bias[k]) for layer in mlp.layers]
        dims = (0, 1) if k % 2 == 0 else (1, 0)  # our dimension d is FlowJAX's dims[d] in layer k
        if k % 2:
            ws[0] = ws[0][:, ::-1]
        rows = [dims[d] * 2 + p for p in range(2) for d in range(2)]
        ws[-1], bs[-1] = ws[-1][rows], bs[-1][rows]
        flat = np.concatenate([t.reshape(-1) for w, b in zip(ws, bs) for t in (w, b)])
        out[f"transforms.{num - 1 - k}.made.flat"] = jnp.asarray(flat, jnp.float32)
    return out


def our_maf(seed: int = 0, **kwargs):
    """``numpyroflows.flows.MAF`` with ``density.py``'s architecture, initialised from ``PRNGKey(seed)``."""
    import jax

    from numpyroflows import flows

    return flows.MAF(2, num_transforms=density.NUM_TRANSFORMS, hidden_dims=density.HIDDEN,
                     key=jax.random.PRNGKey(seed), **kwargs)


def train(log_prob, params, task: density.Task, steps: int, seed: int) -> float:
    """``density.py``'s JAX loop from ``params``; the mean held-out log-likelihood."""
    import jax
    import jax.numpy as jnp

    run, opt, evaluate = density.jax_trainer(log_prob, steps, False)
    idx = density.batch_indices(len(task.train), task.batch, steps, seed)
    params, _, losses = run(params, opt.init(params), jnp.asarray(task.train), jnp.asarray(idx),
                            jax.random.PRNGKey(20_000 + seed))
    if not bool(jnp.all(jnp.isfinite(losses))):
        return float("nan")
    return float(jnp.mean(evaluate(params, jnp.asarray(task.test))))


def mean_se(values) -> tuple[float, float]:
    """Mean and its standard error (NaN for one value)."""
    v = np.asarray(values, dtype=float)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy", default="2spirals", choices=density.TOYS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="smoke test: 100 steps, seeds 0 and 1")
    args = parser.parse_args(argv)
    steps, seeds = (100, [0, 1]) if args.quick else (args.steps, args.seeds)

    import equinox as eqx
    import jax.numpy as jnp
    import paramax

    task = density.toy_task(args.toy)
    x = jnp.asarray(task.train[:2000])
    mine = our_maf(transformer={"name": "affine", "scale": "softplus", "min_scale": FLOWJAX_MIN_SCALE},
                   output_init="fan_in")
    default = our_maf()
    same, own = [], []
    t0 = time.perf_counter()
    print(f"{args.toy}: {steps} steps of batch {density.BATCH}, seeds {seeds}", flush=True)
    ours_lp = lambda p, v: mine.with_params(p)().log_prob(v)  # noqa: E731
    default_lp = lambda p, v: default.with_params(p)().log_prob(v)  # noqa: E731
    # one log_prob function for every seed, so the training loop compiles once: the static part (masks,
    # structure) does not depend on the seed, which the check below confirms seed by seed
    static0 = flowjax_maf(seeds[0])[1]
    theirs_lp = lambda p, v: paramax.unwrap(eqx.combine(p, static0)).log_prob(v)  # noqa: E731
    for seed in seeds:
        params, static = flowjax_maf(seed)
        own_static = paramax.unwrap(eqx.combine(params, static)).log_prob(x)
        if not bool(jnp.all(theirs_lp(params, x) == own_static)):
            raise RuntimeError("FlowJAX's MAF has a seed-dependent static part; build its log_prob per seed")
        copied = copy_weights(params, static)
        gap = float(jnp.max(jnp.abs(ours_lp(copied, x) - theirs_lp(params, x))))
        if not gap < 1e-3:
            raise AssertionError(f"seed {seed}: the copied MAF's log_prob differs from FlowJAX's by {gap:.2e}")
        ll_theirs = train(theirs_lp, params, task, steps, seed)
        ll_same = train(ours_lp, copied, task, steps, seed)
        ll_own = train(default_lp, our_maf(seed).params, task, steps, seed)
        same.append(ll_same - ll_theirs)
        own.append(ll_own - ll_theirs)
        print(f"  seed {seed}: max |log p difference| at the start {gap:.1e}; held-out LL FlowJAX {ll_theirs:.4f}, "
              f"ours from FlowJAX's start {ll_same:.4f}, ours from its own start {ll_own:.4f}", flush=True)
    m1, s1 = mean_se(same)
    m2, s2 = mean_se(own)
    print(f"\n{args.toy}, {len(seeds)} seeds, {time.perf_counter() - t0:.0f} s (held-out log-likelihood, nats/point, "
          "mean ± se over seeds):")
    print(f"| ours from FlowJAX's start - FlowJAX | {m1:+.4f} ± {s1:.4f} |")
    print(f"| ours from its own start - FlowJAX | {m2:+.4f} ± {s2:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
