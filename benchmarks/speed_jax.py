"""Speed benchmark: numpyroflows against FlowJAX and NumPyro's built-in flows, all timed in the same run.

Usage::

    python benchmarks/speed_jax.py [--repeats N] [--quick] [--json out.json] [--bench KEY ...]

Every library's work is one ``jax.jit``-compiled function (the same optax Adam update, lr 1e-3, for all), called with
``block_until_ready``. The first call (tracing + XLA compilation) is reported apart as ``compile s``; the timed
calls reuse the compiled function. Workloads on 8-dimensional data:

* ``maf_train``:  one maximum-likelihood step of an affine MAF on a batch of 512 (``-log_prob(x).mean()``,
  gradient, Adam update), 5 autoregressive layers, masked networks with hidden layers (64, 64);
* ``nsf_train``:  the same with rational-quadratic spline layers (8 bins on [-5, 5], linear tails);
* ``maf_sample`` / ``nsf_sample``: 4096 samples (one pass per dimension: these are density-fast flows);
* ``iaf_vi``: one reverse-KL (variational) step: draw 512 points and their log-density from an affine IAF (one pass
  per layer), loss ``mean(log q - log p)`` for a fixed correlated-Gaussian target, gradient, Adam update;
* ``bnaf_vi``: the same with a block neural autoregressive flow (one layer, hidden factor 8, two hidden layers, as
  NumPyro's ``AutoBNAFNormal``).

Models (same weight shapes everywhere; the ``params`` column shows it):

* numpyroflows: ``flows.MAF(8, num_transforms=5, hidden_dims=(64, 64))``, ``flows.NSF(..., count_bins=8, bound=5)``,
  ``flows.IAF(8, num_transforms=5, hidden_dims=(64, 64))``, ``flows.BNAF(8, orientation="iaf", residual=None)``;
* FlowJAX: ``masked_autoregressive_flow(key, base_dist=Normal(zeros(8)), transformer=Affine() |
  RationalQuadraticSpline(knots=7, interval=5), flow_layers=5, nn_width=64, nn_depth=2, invert=True)`` (FlowJAX
  counts inner knots: 7 give the 8 bins of the others; ``invert=True`` is FlowJAX's density-fast orientation,
  ``invert=False`` the sampling-fast one used for ``iaf_vi``), and
  ``block_neural_autoregressive_flow(..., nn_depth=2, nn_block_dim=8, flow_layers=1, invert=False)`` for ``bnaf_vi``;
* NumPyro: ``InverseAutoregressiveTransform`` over ``numpyro.nn.AutoregressiveNN(8, [64, 64])`` x5 with reversing
  ``PermuteTransform`` between layers, built as ``AutoIAFNormal`` builds it (``iaf_vi``), and
  ``BlockNeuralAutoregressiveTransform(BlockNeuralAutoregressiveNN(8, [8, 8]))`` as ``AutoBNAFNormal`` (``bnaf_vi``).
  NumPyro's flows have no inverse, so they take part only in the variational workloads.

``maf_train`` also times ``floor (unmasked)``, a reference row that is not a library: the same networks and affine
maps with the masks (and everything else) removed. No MAF of this architecture trains faster than this floor.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import (
    Benchmark,
    Case,
    evaluate_targets,
    fmt_ms,
    fmt_ratio,
    format_table,
    machine_info,
    optional_import,
    per_round_ratios,
    prepare,
    print_targets,
    run_interleaved,
    summarize,
)

INPUT_DIM = 8
BATCH = 512
NUM_TRANSFORMS = 5
HIDDEN = (64, 64)
COUNT_BINS = 8
BOUND = 5.0
LR = 1e-3
NUM_SAMPLES = 4096
BNAF_FACTOR = 8
SEED = 0
OURS = "numpyroflows"
FLOOR = "floor (unmasked)"  # a reference row, not a library: see build_floor

# a fixed correlated Gaussian target for the variational workloads
_TARGET_L = np.tril(np.full((INPUT_DIM, INPUT_DIM), 0.3)) + np.diag(np.linspace(0.5, 1.5, INPUT_DIM))
_TARGET_PREC = np.linalg.inv(_TARGET_L @ _TARGET_L.T)


def target_log_prob(x: jax.Array) -> jax.Array:
    """Unnormalised log-density of N(0, L Lᵀ) (the normaliser does not change the gradient)."""
    return -0.5 * jnp.einsum("...i,ij,...j->...", x, jnp.asarray(_TARGET_PREC, x.dtype), x)


# ================================================================================================ models


@dataclass
class Model:
    """A built flow as the benchmarks see it: trainable parameters plus pure functions of them."""

    params: object  # a pytree of arrays: what the optimizer updates
    log_prob: Callable | None  # (params, x) -> (n,)
    sample: Callable | None  # (params, key, n) -> (n, D)
    sample_and_log_prob: Callable | None  # (params, key, n) -> ((n, D), (n,))

    @property
    def num_params(self) -> int:
        return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(self.params)))


def build_numpyroflows(kind: str, key: jax.Array) -> Model:
    from numpyroflows import flows

    if kind == "maf":
        flow = flows.MAF(INPUT_DIM, num_transforms=NUM_TRANSFORMS, hidden_dims=HIDDEN, key=key)
    elif kind == "nsf":
        flow = flows.NSF(INPUT_DIM, num_transforms=NUM_TRANSFORMS, hidden_dims=HIDDEN, count_bins=COUNT_BINS,
                         bound=BOUND, key=key)
    elif kind == "iaf":
        flow = flows.IAF(INPUT_DIM, num_transforms=NUM_TRANSFORMS, hidden_dims=HIDDEN, key=key)
    else:
        flow = flows.BNAF(INPUT_DIM, num_transforms=1, hidden_factor=BNAF_FACTOR, num_layers=2, residual=None,
                          orientation="iaf", key=key)

    def dist(p):
        return flow.with_params(p)()

    return Model(flow.params, lambda p, x: dist(p).log_prob(x), lambda p, k, n: dist(p).sample(k, (n,)),
                 lambda p, k, n: dist(p).sample_and_log_prob(k, (n,)))


def build_flowjax(kind: str, key: jax.Array) -> Model:
    import equinox as eqx
    import paramax
    from flowjax.bijections import Affine, RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import block_neural_autoregressive_flow, masked_autoregressive_flow

    base = Normal(jnp.zeros(INPUT_DIM))
    if kind == "bnaf":
        flow = block_neural_autoregressive_flow(key, base_dist=base, nn_depth=2, nn_block_dim=BNAF_FACTOR,
                                                flow_layers=1, invert=False)
    else:
        transformer = (RationalQuadraticSpline(knots=COUNT_BINS - 1, interval=BOUND) if kind == "nsf" else Affine())
        flow = masked_autoregressive_flow(key, base_dist=base, transformer=transformer, flow_layers=NUM_TRANSFORMS,
                                          nn_width=HIDDEN[0], nn_depth=len(HIDDEN), invert=kind != "iaf")
    # FlowJAX's own training loop: train the inexact arrays, keep NonTrainable leaves static, unwrap on use
    params, static = eqx.partition(flow, eqx.is_inexact_array,
                                   is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))

    def dist(p):
        return paramax.unwrap(eqx.combine(p, static))

    return Model(params, lambda p, x: dist(p).log_prob(x), lambda p, k, n: dist(p).sample(k, (n,)),
                 lambda p, k, n: dist(p).sample_and_log_prob(k, (n,)))


def build_numpyro(kind: str, key: jax.Array) -> Model:
    """NumPyro's flows as its autoguides build them (no inverse: variational workloads only)."""
    from numpyro.distributions.flows import BlockNeuralAutoregressiveTransform, InverseAutoregressiveTransform
    from numpyro.distributions.transforms import PermuteTransform
    from numpyro.nn import AutoregressiveNN, BlockNeuralAutoregressiveNN

    if kind not in ("iaf", "bnaf"):
        raise NotImplementedError("NumPyro's flows have no inverse: no density of data, no MAF orientation")
    keys = jax.random.split(key, NUM_TRANSFORMS)
    nets, params = [], []
    num = NUM_TRANSFORMS if kind == "iaf" else 1
    for i in range(num):
        if kind == "iaf":
            init, apply = AutoregressiveNN(INPUT_DIM, list(HIDDEN), permutation=jnp.arange(INPUT_DIM))
        else:
            init, apply = BlockNeuralAutoregressiveNN(INPUT_DIM, [BNAF_FACTOR, BNAF_FACTOR])
        _, p = init(keys[i], (INPUT_DIM,))
        nets.append(apply)
        params.append(p)
    reverse = PermuteTransform(jnp.arange(INPUT_DIM)[::-1])

    def sample_and_log_prob(p, k, n):
        z = jax.random.normal(k, (n, INPUT_DIM))
        lp = -0.5 * jnp.sum(z * z, -1) - 0.5 * INPUT_DIM * jnp.log(2 * jnp.pi)
        for i, (apply, pi) in enumerate(zip(nets, p)):
            if i > 0:
                z = reverse(z)
            t = (InverseAutoregressiveTransform if kind == "iaf" else BlockNeuralAutoregressiveTransform)(
                lambda v, apply=apply, pi=pi: apply(pi, v))
            y, inter = t.call_with_intermediates(z)
            lp = lp - t.log_abs_det_jacobian(z, y, intermediates=inter)
            z = y
        return z, lp

    return Model(params, None, lambda p, k, n: sample_and_log_prob(p, k, n)[0], sample_and_log_prob)


def build_floor(kind: str, key: jax.Array) -> Model:
    """Not a flow: the affine MAF's arithmetic with the autoregressive masks removed (5 plain MLPs 8 -> 64 -> 64 ->
    16, affine maps of the data with ``exp`` scales, the order reversed between layers): the same matrix products as
    every MAF here and nothing else, i.e. the floor under what a MAF training step of this size can cost."""
    if kind != "maf":
        raise NotImplementedError("the floor is defined for the affine MAF only")
    sizes = (INPUT_DIM, *HIDDEN, 2 * INPUT_DIM)
    keys = jax.random.split(key, NUM_TRANSFORMS * len(HIDDEN) + NUM_TRANSFORMS)
    params, k = [], 0
    for _ in range(NUM_TRANSFORMS):
        layer = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layer.append((jax.random.normal(keys[k], (fan_out, fan_in)) / np.sqrt(fan_in) * 0.1, jnp.zeros(fan_out)))
            k += 1
        params.append(layer)

    def log_prob(p, x):
        z, total = x, 0.0
        for i, layer in enumerate(p):
            if i > 0:
                z = z[..., ::-1]
            h = z
            for j, (w, b) in enumerate(layer):
                h = h @ w.T + b
                if j < len(layer) - 1:
                    h = jax.nn.relu(h)
            shift, log_scale = h[..., :INPUT_DIM], h[..., INPUT_DIM:]
            z = (z - shift) * jnp.exp(-log_scale)
            total = total - log_scale.sum(-1)
        return total - 0.5 * jnp.sum(z * z, -1) - INPUT_DIM * 0.5 * np.log(2 * np.pi)

    return Model(params, log_prob, None, None)


@dataclass(frozen=True)
class Library:
    name: str
    module: str
    build: Callable[[str, jax.Array], Model]
    kinds: tuple[str, ...]  # the model kinds (or benchmark keys) it takes part in


LIBRARIES = (
    Library(OURS, "numpyroflows", build_numpyroflows, ("maf", "nsf", "iaf", "bnaf")),
    Library("flowjax", "flowjax", build_flowjax, ("maf", "nsf", "iaf", "bnaf")),
    Library("numpyro", "numpyro", build_numpyro, ("iaf", "bnaf")),
    Library(FLOOR, "jax", build_floor, ("maf_train",)),
)

# ================================================================================================ benchmarks


BENCHMARKS = (
    Benchmark("maf_train", f"MAF training step (batch {BATCH})", "maf", "train"),
    Benchmark("nsf_train", f"NSF training step (batch {BATCH})", "nsf", "train"),
    Benchmark("maf_sample", f"MAF sampling ({NUM_SAMPLES} points)", "maf", "sample"),
    Benchmark("nsf_sample", f"NSF sampling ({NUM_SAMPLES} points)", "nsf", "sample"),
    Benchmark("iaf_vi", f"IAF variational step (batch {BATCH})", "iaf", "vi"),
    Benchmark("bnaf_vi", f"BNAF variational step (batch {BATCH})", "bnaf", "vi"),
)

#: The project issue's targets: (benchmark, peer, largest acceptable ours/peer ratio).
TARGETS = (
    ("maf_train", "flowjax", 0.8),
    ("nsf_train", "flowjax", 0.8),
    ("nsf_sample", "flowjax", 0.8),
)

REPEATS = {"train": 30, "vi": 30, "sample": 10}
WARMUP = 3
QUICK_REPEATS = 3
MIN_SAMPLE_TIME = 0.02
QUICK_MIN_SAMPLE_TIME = 0.005


def make_op(model: Model, op: str, x: jax.Array) -> Callable[[], object]:
    """The timed unit of work: one jitted optimizer step (the state carried from call to call) or one batch of
    samples; each call waits for its result."""
    key = jax.random.key(SEED + 1)
    if op == "sample":
        fn = jax.jit(model.sample, static_argnums=2)
        return lambda: jax.block_until_ready(fn(model.params, key, NUM_SAMPLES))

    optimizer = optax.adam(LR)
    if op == "train":
        def loss(p, data):
            return -jnp.mean(model.log_prob(p, data))
    else:
        def loss(p, k):
            xs, lq = model.sample_and_log_prob(p, k, BATCH)
            return jnp.mean(lq - target_log_prob(xs))

    @jax.jit
    def step(p, state, arg):
        value, grads = jax.value_and_grad(loss)(p, arg)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, value

    carry = [model.params, optimizer.init(model.params)]

    def run() -> object:
        carry[0], carry[1], value = step(carry[0], carry[1], x if op == "train" else key)
        return jax.block_until_ready(value)

    return run


def check(model: Model, op: str, x: jax.Array) -> str | None:
    """Why ``model`` is unfit to benchmark, or ``None``: finite log-densities (and, for sampling, log_prob of its
    own samples equals the log-density returned with them, so the timed sampler inverts the density)."""
    key = jax.random.key(SEED + 2)
    if op == "train":
        lp = model.log_prob(model.params, x)
        return None if lp.shape == (BATCH,) and bool(jnp.all(jnp.isfinite(lp))) else "log_prob not finite"
    s, lq = model.sample_and_log_prob(model.params, key, 256)
    if s.shape != (256, INPUT_DIM) or not bool(jnp.all(jnp.isfinite(lq))):
        return "samples or their log-density are not finite"
    if op == "sample" and model.log_prob is not None:
        err = float(jnp.max(jnp.abs(model.log_prob(model.params, s) - lq)))
        if not err <= 1e-2:
            return f"log_prob of its own samples is off by {err:.3g}"
    return None


def run_benchmark(bench: Benchmark, status: dict[str, str], x: jax.Array, repeats: int, min_time: float,
                  warmup: int) -> dict:
    entries: dict[str, dict] = {}
    cases: list[Case] = []
    for lib in LIBRARIES:
        if bench.kind not in lib.kinds and bench.key not in lib.kinds:
            continue
        entry = entries[lib.name] = {"status": status[lib.name]}
        if status[lib.name] != "ok":
            continue
        try:
            model = lib.build(bench.kind, jax.random.key(SEED))
            problem = check(model, bench.op, x)
            if problem is not None:
                entry["status"] = f"failed check: {problem}"
                continue
            entry["params"] = model.num_params
            case = Case(lib.name, make_op(model, bench.op, x))
            prepare(case, lambda: None, warmup, min_time)
        except Exception as err:  # a peer's API change must not stop the run
            entry["status"] = f"error: {type(err).__name__}: {err}"
            continue
        cases.append(case)
    run_interleaved(cases, lambda: None, repeats)
    for case in cases:
        stats = summarize(case.times_s)
        entries[case.name].update(compile_s=case.first_call_s, median_ms=stats["median"] * 1e3,
                                  q25_ms=stats["q25"] * 1e3, q75_ms=stats["q75"] * 1e3, calls_per_sample=case.inner,
                                  times_ms=[t * 1e3 for t in case.times_s])
    ratios: dict[str, dict] = {}
    by_name = {c.name: c for c in cases}
    if OURS in by_name:
        for name, peer in by_name.items():
            if name != OURS:
                r = per_round_ratios(by_name[OURS].times_s, peer.times_s)
                ratios[name] = {**summarize(r), "per_round": r}
    return {"title": bench.title, "kind": bench.kind, "op": bench.op, "repeats": repeats, "libraries": entries,
            "ratios_ours_over_peer": ratios}


def print_benchmark(result: dict) -> None:
    print(f"\n== {result['title']}: median of {result['repeats']} interleaved rounds")
    rows, skipped = [], []
    for name, e in result["libraries"].items():
        if e["status"] != "ok":
            skipped.append(f"   {name}: {e['status']}")
            continue
        ratio = "(ours)" if name == OURS else fmt_ratio(result["ratios_ours_over_peer"].get(name))
        rows.append([name, str(e["params"]), f"{e['compile_s']:.2f}", fmt_ms(e["median_ms"] / 1e3),
                     f"{fmt_ms(e['q25_ms'] / 1e3)}-{fmt_ms(e['q75_ms'] / 1e3)}", ratio])
    if rows:
        print(format_table(["library", "params", "compile s", "median ms", "IQR ms", "ours/peer [IQR]"], rows))
    for line in skipped:
        print(line)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=None, help="timing rounds per benchmark (default 30 for steps, "
                   f"10 for sampling; {QUICK_REPEATS} with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke test: few rounds, one warm-up call")
    p.add_argument("--json", type=Path, default=None, help="write every figure and the machine info to this file")
    p.add_argument("--bench", nargs="+", choices=[b.key for b in BENCHMARKS], default=None)
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    status = {lib.name: optional_import(lib.module)[1] for lib in LIBRARIES}
    info = machine_info(jax.devices()[0].platform,
                        ("pyroflows", "jax", "jaxlib", "numpyro", "flowjax", "equinox", "optax", "numpy"))
    v = info["versions"]
    print(f"numpyroflows speed benchmark  {info['date_utc']}  device={jax.devices()[0]}")
    print(f"cpu: {info['cpu_model']}, {info['usable_cores']} usable cores, load average {info['load_average_1_5_15']}")
    print("versions: " + ", ".join(f"{k} {v[k] or 'not installed'}" for k in v))
    x = jax.random.normal(jax.random.key(SEED), (BATCH, INPUT_DIM))
    results: dict[str, dict] = {}
    for bench in BENCHMARKS:
        if args.bench is not None and bench.key not in args.bench:
            continue
        repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS[bench.op])
        results[bench.key] = run_benchmark(bench, status, x, repeats,
                                           QUICK_MIN_SAMPLE_TIME if args.quick else MIN_SAMPLE_TIME,
                                           1 if args.quick else WARMUP)
        print_benchmark(results[bench.key])
    targets = evaluate_targets(results, TARGETS, OURS)
    print_targets(targets, BENCHMARKS)
    print("\nratio = our time / peer time per round, median [quartiles]; < 1 means numpyroflows is faster; "
          "compile s = first call (trace + XLA compile), not in the ratios")
    if args.json is not None:
        config = {"input_dim": INPUT_DIM, "batch": BATCH, "num_transforms": NUM_TRANSFORMS, "hidden": list(HIDDEN),
                  "count_bins": COUNT_BINS, "bound": BOUND, "lr": LR, "num_samples": NUM_SAMPLES,
                  "bnaf_hidden_factor": BNAF_FACTOR, "seed": SEED, "quick": args.quick, "argv": sys.argv[1:]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "config": config, "benchmarks": results,
                                         "targets": targets}, indent=1))
        print(f"wrote {args.json}")
    broken = [r["libraries"][OURS]["status"] for r in results.values() if r["libraries"][OURS]["status"] != "ok"]
    if broken:
        print(f"error: {OURS} could not be benchmarked: {broken[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
