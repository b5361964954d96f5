"""GPU benchmark: sampling and log_prob throughput, and training step time, of pyroflows, zuko, numpyroflows and
FlowJAX, all timed in the same run.

Usage::

    python benchmarks/gpu.py [--device cuda|cpu] [--min-log2 10] [--max-log2 20] [--log2-step 2] [--repeats N]
                             [--quick] [--json F]

Models: the configurations of ``speed.py`` and ``speed_jax.py`` (whose builders this script imports): 8-dimensional
data, 5 autoregressive layers, MADE hidden layers (64, 64); ``MAF`` affine, ``NSF`` rational-quadratic splines with
8 bins on [-5, 5]; ``IAF`` the affine autoregressive flow in the sampling-fast orientation (pyroflows ``flows.IAF``,
numpyroflows ``flows.IAF``, FlowJAX ``masked_autoregressive_flow(..., invert=False)``, zuko's MAF with its transform
inverted, ``zuko.lazy.Flow(maf.transform.inv, maf.base)``). Torch libraries run on ``--device``; JAX libraries on
JAX's default backend (reported), pinned to the CPU with ``--device cpu``.

Workloads, for each flow and library:

* ``sample``: throughput (points per second) of drawing ``n`` points (torch under ``no_grad``; JAX one jitted call),
  for ``n = 2^min .. 2^max``;
* ``log_prob``: throughput of the log-density of ``n`` fresh standard-normal points;
* ``train``: one maximum-likelihood step (``-log_prob(x).mean()``, gradient, Adam lr 1e-3) of MAF and NSF at batch
  512 and at batch 2^14 (the steps of ``speed.py`` / ``speed_jax.py``).

The slow directions are included and labelled ``(D passes)``: sampling a MAF or an NSF and the log-density of fresh
data under an IAF take one network pass per dimension (8 here) instead of one per layer.

Batch sizes go up in steps of ``--log2-step`` in the exponent (default 2: 2^10, 2^12, ..., 2^20). ``--quick`` is a
smoke test (about 1.5 CPU-minutes on 2 CPU cores with ``--device cpu --max-log2 14``): 2 rounds, no warm-up beyond
the first call, every 4th power of 2 (2^10, 2^14), training at batch 512 only, one torch thread on the CPU.

Every figure is the median of a few interleaved rounds (all libraries timed once per round, in rotating order), with
the device synchronised around each timing (``torch.cuda.synchronize``; ``jax.block_until_ready`` on the result).
JAX compiles once per batch size; the first call (compilation, or allocator growth for torch) is reported apart in
the JSON and not in the figures. Ratios are ours/peer *times* per round (pyroflows/zuko, numpyroflows/FlowJAX),
median over rounds: < 1 means ours is faster. An out-of-memory error (``torch.cuda.OutOfMemoryError``, XLA
``RESOURCE_EXHAUSTED``) is reported as ``OOM`` for that case and the run goes on. JAX is told not to preallocate 75%
of the GPU (``XLA_PYTHON_CLIENT_PREALLOCATE=false``, unless set) so that torch and JAX share it.

Before timing, each (library, flow) pair passes a sanity check (torch: ``speed.check``; JAX: :func:`jax_check`, its
jitted twin): with the parameters moved away from their initial values, finite samples and log-densities, and
``log_prob`` of the samples equal to the log-density drawn with them (the timed sampler really inverts the density).
Every timed output is also checked for shape and finiteness.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import speed
import torch
from common import (
    Case,
    device_sync,
    fmt_ms,
    format_table,
    machine_info,
    optional_import,
    per_round_ratios,
    prepare,
    run_interleaved,
    summarize,
)

INPUT_DIM = speed.INPUT_DIM
NUM_TRANSFORMS = speed.NUM_TRANSFORMS
HIDDEN = speed.HIDDEN
TRAIN_BATCHES = (512, 2**14)
QUICK_TRAIN_BATCHES = (512,)
KINDS = ("maf", "nsf", "iaf")
TRAIN_KINDS = ("maf", "nsf")
#: (kind, op) pairs that take one network pass per dimension
SLOW = {("maf", "sample"), ("nsf", "sample"), ("iaf", "log_prob")}
TORCH_OURS, TORCH_PEER = "pyroflows", "zuko"
JAX_OURS, JAX_PEER = "numpyroflows", "flowjax"
LIBRARIES = (TORCH_OURS, TORCH_PEER, JAX_OURS, JAX_PEER)
FRAMEWORK = {TORCH_OURS: "torch", TORCH_PEER: "torch", JAX_OURS: "jax", JAX_PEER: "jax"}
MODULE = {TORCH_OURS: "pyroflows", TORCH_PEER: "zuko", JAX_OURS: "numpyroflows", JAX_PEER: "flowjax"}
PAIRS = ((TORCH_OURS, TORCH_PEER), (JAX_OURS, JAX_PEER))
SEED = 0

REPEATS, QUICK_REPEATS = 5, 2
WARMUP, QUICK_WARMUP = 2, 0  # warm-up calls after the first (timed apart) call
MIN_SAMPLE_TIME, QUICK_MIN_SAMPLE_TIME = 0.02, 0.005


# ================================================================================================ models


def build_torch(lib: str, kind: str, device: torch.device) -> speed.Model:
    """pyroflows' or zuko's MAF / NSF (the builders of ``speed.py``) or IAF."""
    if kind != "iaf":
        return (speed.build_pyroflows if lib == TORCH_OURS else speed.build_zuko)(kind, device)
    if lib == TORCH_OURS:
        from pyroflows import flows

        flow = flows.IAF(INPUT_DIM, num_transforms=NUM_TRANSFORMS, hidden_dims=HIDDEN)
    else:
        import zuko

        maf = zuko.flows.MAF(INPUT_DIM, transforms=NUM_TRANSFORMS, hidden_features=HIDDEN)
        flow = zuko.lazy.Flow(maf.transform.inv, maf.base)  # sampling in one pass, density in D passes
    flow.to(device)
    return speed.Model(list(flow.parameters()), lambda x: flow().log_prob(x), lambda n: flow().sample((n,)),
                       lambda n: flow().rsample_and_log_prob((n,)))


def build_jax(lib: str, kind: str, key: Any) -> Any:
    """numpyroflows' or FlowJAX's MAF / NSF / IAF (the builders of ``speed_jax.py``): a ``speed_jax.Model``."""
    import speed_jax

    return (speed_jax.build_numpyroflows if lib == JAX_OURS else speed_jax.build_flowjax)(kind, key)


# ================================================================================================ guarded calls


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` says the device (or host) ran out of memory: torch's ``OutOfMemoryError``, XLA's
    ``RESOURCE_EXHAUSTED``, or an allocation failure of the CPU allocators."""
    if isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(err)
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "can't allocate memory"))


def free_memory(device: torch.device) -> None:
    """Drop unreachable buffers and hand torch's cached GPU blocks back (so that JAX can use them)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Unfit(Exception):
    """A library's model cannot be benchmarked; the message is the status to report (``"failed check: ..."``,
    ``"OOM"``, ``"error: ..."``)."""


class Guarded:
    """A timed unit of work that turns its first failure into a status (``"OOM"`` or ``"error: ..."``) and becomes a
    no-op afterwards, so one library running out of memory does not stop the others in the same round. The latest
    output is kept for :func:`output_problem`."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.failed: str | None = None
        self.last: object = None

    def __call__(self) -> object:
        if self.failed is not None:
            return None
        self.last = None  # release the previous output before making the next one
        try:
            self.last = self.fn()
        except Exception as err:  # OOM, or a peer's API change: recorded, the run goes on
            self.failed = "OOM" if is_oom(err) else f"error: {type(err).__name__}: {err}"
            self.last = None
        return self.last


def output_problem(out: object, op: str, n: int) -> str | None:
    """Why the output of a workload is wrong (shape, non-finite values), or ``None`` (also for no output: the torch
    training step returns nothing, the JAX one its loss)."""
    if out is None:
        return None
    shape, expected = tuple(out.shape), {"sample": (n, INPUT_DIM), "log_prob": (n,), "train": ()}[op]
    if shape != expected:
        return f"output has shape {shape}, expected {expected}"
    finite = bool(torch.isfinite(out).all()) if isinstance(out, torch.Tensor) else bool(_jnp().isfinite(out).all())
    return None if finite else "non-finite output"


def _jnp() -> Any:
    import jax.numpy as jnp

    return jnp


# ================================================================================================ workloads


@dataclass
class Env:
    """What the workloads need: the torch device, and for each library whether it runs (``"ok"``) or why not."""

    device: torch.device
    status: dict[str, str]
    repeats: int
    warmup: int
    min_time: float
    check_batch: int  # points drawn by the JAX check: the smallest batch size, so log_prob's compilation is shared
    models: dict[tuple[str, str], Any] = field(default_factory=dict)  # (lib, kind) -> built, checked model
    checked: dict[tuple[str, str], str | None] = field(default_factory=dict)  # (lib, kind) -> problem or None


@dataclass
class JaxFunctions:
    """A JAX model's jitted functions, shared by the check and the timed workloads (one compilation per shape)."""

    sample: Callable
    log_prob: Callable
    sample_and_log_prob: Callable


def jax_check(model: Any, fns: JaxFunctions, n: int) -> str | None:
    """Why a JAX model is unfit to benchmark, or ``None``: with every parameter moved away from its near-identity
    initial value (so that a sampler returning its base noise could not pass), ``n`` samples and their log-density
    are finite and ``log_prob`` of those samples equals that log-density (the sampler inverts the density), as
    ``speed.check`` does for torch. Jitted, with the same functions the workloads time."""
    import jax
    import jax.numpy as jnp

    leaves, tree = jax.tree_util.tree_flatten(model.params)
    keys = jax.random.split(jax.random.key(SEED + 3), len(leaves))
    params = jax.tree_util.tree_unflatten(tree, [
        leaf + speed.PERTURB * jax.random.normal(k, jnp.shape(leaf), jnp.result_type(leaf)) for leaf, k in
        zip(leaves, keys)])
    s, lq = fns.sample_and_log_prob(params, jax.random.key(SEED + 4), n)
    if s.shape != (n, INPUT_DIM) or lq.shape != (n,):
        return f"sample_and_log_prob gives shapes {s.shape}, {lq.shape}; expected ({n}, {INPUT_DIM}), ({n},)"
    if not (bool(jnp.isfinite(s).all()) and bool(jnp.isfinite(lq).all())):
        return "samples or their log-density are not finite"
    if not bool(jnp.allclose(s, fns.sample(params, jax.random.key(SEED + 4), n), rtol=1e-4, atol=1e-4)):
        return "sample() and sample_and_log_prob() draw different points under the same key"
    err = float(jnp.max(jnp.abs(fns.log_prob(params, s) - lq)))
    if not err <= speed.CONSISTENCY_TOL:
        return f"log_prob of its own samples is off by {err:.3g}: sampling does not invert the density"
    return None


def checked_model(env: Env, lib: str, kind: str) -> Any:
    """The (lib, kind) model for the throughput workloads, built and checked once: a torch model is checked with
    ``speed.check`` on a separate instance (the check perturbs the parameters), a JAX model (returned with its
    :class:`JaxFunctions`) with :func:`jax_check`. Raises :class:`Unfit` if unfit."""
    key = (lib, kind)
    if key not in env.checked:
        try:
            if FRAMEWORK[lib] == "torch":
                torch.manual_seed(SEED)
                x = torch.randn(speed.BATCH, INPUT_DIM, generator=torch.Generator().manual_seed(SEED)).to(env.device)
                problem = speed.check(build_torch(lib, kind, env.device), "sample", x)
                torch.manual_seed(SEED)
                model = build_torch(lib, kind, env.device)
            else:
                import jax

                built = build_jax(lib, kind, jax.random.key(SEED))
                fns = JaxFunctions(jax.jit(built.sample, static_argnums=2), jax.jit(built.log_prob),
                                   jax.jit(built.sample_and_log_prob, static_argnums=2))
                model = (built, fns)
                problem = jax_check(built, fns, env.check_batch)
        except Exception as err:
            problem = "OOM" if is_oom(err) else f"error: {type(err).__name__}: {err}"
            model = None
        else:
            problem = None if problem is None else f"failed check: {problem}"
        env.checked[key] = problem
        if problem is None:
            env.models[key] = model
    if env.checked[key] is not None:
        raise Unfit(env.checked[key])
    return env.models[key]


def make_fn(env: Env, lib: str, kind: str, op: str, n: int) -> Callable[[], object]:
    """The unit of work for one case: one batch of ``n`` samples or log-densities, or one training step at batch
    ``n`` (a fresh model, since the step changes the parameters)."""
    if FRAMEWORK[lib] == "torch":
        gen = torch.Generator().manual_seed(SEED + 1)
        if op == "train":
            torch.manual_seed(SEED)
            x = torch.randn(n, INPUT_DIM, generator=gen).to(env.device)
            return speed.make_op(build_torch(lib, kind, env.device), "train", x)
        model = checked_model(env, lib, kind)
        if op == "sample":
            def draw() -> torch.Tensor:
                with torch.no_grad():
                    return model.sample(n)
            return draw
        x = torch.randn(n, INPUT_DIM, generator=gen).to(env.device)

        def score() -> torch.Tensor:
            with torch.no_grad():
                return model.log_prob(x)
        return score

    import jax
    import speed_jax

    x = jax.random.normal(jax.random.key(SEED + 1), (n, INPUT_DIM))
    if op == "train":
        return speed_jax.make_op(build_jax(lib, kind, jax.random.key(SEED)), "train", x)
    model, fns = checked_model(env, lib, kind)
    key = jax.random.key(SEED + 2)
    if op == "sample":
        return lambda: jax.block_until_ready(fns.sample(model.params, key, n))
    return lambda: jax.block_until_ready(fns.log_prob(model.params, x))


def run_case(env: Env, kind: str, op: str, n: int) -> dict:
    """Time every available library on one (flow, workload, batch size); returns the JSON-able figures."""
    sync = device_sync(env.device)  # JAX calls block on their own result
    entries: dict[str, dict] = {}
    for group in PAIRS:
        cases: list[Case] = []
        guards: dict[str, Guarded] = {}
        for lib in group:
            entry = entries[lib] = {"status": env.status[lib]}
            if env.status[lib] != "ok":
                continue
            try:
                guard = Guarded(make_fn(env, lib, kind, op, n))
            except Unfit as err:
                entry["status"] = str(err)
                continue
            except Exception as err:  # OOM or an error while building
                entry["status"] = "OOM" if is_oom(err) else f"error: {type(err).__name__}: {err}"
                continue
            case = Case(lib, guard)
            prepare(case, sync, env.warmup, env.min_time)
            problem = guard.failed or output_problem(guard.last, op, n)
            guard.last = None
            if problem is not None:
                entry["status"] = problem
                continue
            cases.append(case)
            guards[lib] = guard
        run_interleaved(cases, sync, env.repeats)
        for case in cases:
            guard = guards[case.name]
            guard.last = None
            if guard.failed is not None:
                entries[case.name]["status"] = guard.failed
                continue
            stats = summarize(case.times_s)
            entries[case.name].update(
                first_call_s=case.first_call_s, median_s=stats["median"], q25_s=stats["q25"], q75_s=stats["q75"],
                calls_per_sample=case.inner, times_s=case.times_s,
                throughput_per_s=None if op == "train" else n / stats["median"])
        ours, peer = group
        if entries[ours].get("median_s") is not None and entries[peer].get("median_s") is not None:
            ours_case = next(c for c in cases if c.name == ours)
            peer_case = next(c for c in cases if c.name == peer)
            r = per_round_ratios(ours_case.times_s, peer_case.times_s)
            entries[ours]["ratio_over_peer"] = {"peer": peer, **summarize(r), "per_round": r}
        del cases, guards
        free_memory(env.device)
    return {"kind": kind, "op": op, "batch": n, "slow": (kind, op) in SLOW, "libraries": entries}


# ================================================================================================ report


def fmt_rate(per_s: float) -> str:
    """Points per second with a unit prefix: ``12.3M``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if per_s >= scale:
            return f"{per_s / scale:.3g}{unit}"
    return f"{per_s:.3g}"


def fmt_cell(entry: dict, op: str) -> str:
    if entry.get("median_s") is None:
        return "OOM" if entry["status"] == "OOM" else "-"
    return fmt_ms(entry["median_s"]) if op == "train" else fmt_rate(entry["throughput_per_s"])


def fmt_pair_ratio(entry: dict) -> str:
    r = entry.get("ratio_over_peer")
    return "-" if r is None else f"{r['median']:.2f}x"


def log2_label(n: int) -> str:
    k = n.bit_length() - 1
    return f"2^{k}" if n == 1 << k else str(n)


def print_table(results: list[dict], op: str, repeats: int) -> None:
    rows, notes = [], {}
    for res in results:
        if res["op"] != op:
            continue
        libs = res["libraries"]
        label = res["kind"].upper() + (" (D passes)" if res["slow"] else "")
        rows.append([label, log2_label(res["batch"]),
                     fmt_cell(libs[TORCH_OURS], op), fmt_cell(libs[TORCH_PEER], op), fmt_pair_ratio(libs[TORCH_OURS]),
                     fmt_cell(libs[JAX_OURS], op), fmt_cell(libs[JAX_PEER], op), fmt_pair_ratio(libs[JAX_OURS])])
        for lib, e in libs.items():
            if e["status"] not in ("ok", "OOM"):
                notes.setdefault((lib, e["status"]), []).append(f"{res['kind']}@{log2_label(res['batch'])}")
    if not rows:
        return
    what = {"sample": "sampling throughput, points/s", "log_prob": "log_prob throughput (fresh data), points/s",
            "train": "training step (log_prob + backward + Adam), ms"}[op]
    print(f"\n== {what}: median of {repeats} interleaved rounds")
    print(format_table(["flow", "batch", TORCH_OURS, TORCH_PEER, "ours/peer", JAX_OURS, JAX_PEER, "ours/peer"], rows,
                       align="llrrrrrr"))
    for (lib, status), where in notes.items():
        print(f"   {lib}: {status} ({', '.join(where) if len(where) <= 4 else f'{len(where)} cases'})")


# ================================================================================================ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="torch device (default: cuda if torch sees one, else cpu); cpu also pins JAX to the CPU")
    p.add_argument("--min-log2", type=int, default=10, help="smallest batch 2^k for the throughput (default 10)")
    p.add_argument("--max-log2", type=int, default=20, help="largest batch 2^k for the throughput (default 20)")
    p.add_argument("--log2-step", type=int, default=None, help="step of k (default 2; 4 with --quick)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timing rounds per case (default {REPEATS}; {QUICK_REPEATS} with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {QUICK_REPEATS} rounds, no warm-up beyond the first call, every 4th power of 2, "
                        "training at batch 512 only, 1 torch thread on the CPU")
    p.add_argument("--json", type=Path, default=None, help="write every figure and the machine info to this file")
    args = p.parse_args(argv)
    if not 0 <= args.min_log2 <= args.max_log2 <= 30:
        p.error("need 0 <= --min-log2 <= --max-log2 <= 30")
    if args.log2_step is not None and args.log2_step < 1:
        p.error("--log2-step must be at least 1")
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def jax_setup(device: torch.device) -> tuple[dict[str, str], dict[str, Any]]:
    """Import JAX with the environment this benchmark needs; the status of the JAX libraries and JAX's backend."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch
    if device.type == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    status = {lib: optional_import(MODULE[lib])[1] for lib in (JAX_OURS, JAX_PEER)}
    backend: dict[str, Any] = {"backend": None, "devices": None}
    module, why = optional_import("speed_jax")  # imports jax, optax and the shared JAX builders
    if module is None:
        return {lib: f"JAX benchmark unavailable: {why}" for lib in status}, backend
    import jax

    backend = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
               "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
               "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS")}
    if device.type == "cuda" and backend["backend"] != "gpu":
        reason = (f"skipped: --device cuda but JAX has no GPU backend (default backend: {backend['backend']}); "
                  "install a CUDA build of jaxlib (pip install 'jax[cuda12]') to benchmark the JAX libraries on "
                  "the GPU")
        status = {lib: reason if s == "ok" else s for lib, s in status.items()}
    return status, backend


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.device == "cpu":
            print("note: torch sees no CUDA device: running on the CPU (--device cpu); the figures are CPU figures")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device (use --device cpu, or a CUDA build of torch)",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cpu" and args.quick:
        torch.set_num_threads(1)  # a smoke test must not hinge on thread-pool contention on a busy machine
    step = args.log2_step or (4 if args.quick else 2)
    sizes = [2**k for k in range(args.min_log2, args.max_log2 + 1, step)]
    if device.type == "cpu" and sizes[-1] > 2**16:
        print(f"note: batches up to {log2_label(sizes[-1])} on the CPU take a while; --max-log2 14 is a smoke test")

    status = {lib: optional_import(MODULE[lib])[1] for lib in (TORCH_OURS, TORCH_PEER)}
    jax_status, jax_backend = jax_setup(device)
    status.update(jax_status)
    info = machine_info(device, ("pyroflows", "torch", "zuko", "jax", "jaxlib", "numpyro", "flowjax", "equinox",
                                 "optax", "numpy"))
    info["jax"] = jax_backend
    v = info["versions"]
    print(f"pyroflows GPU benchmark  {info['date_utc']}  torch device={device}"
          + (f" ({info['gpu']})" if info["gpu"] else "")
          + f"  jax backend={jax_backend['backend']} {jax_backend['devices']}")
    print(f"cpu: {info['cpu_model']}, {info['usable_cores']} usable cores, torch threads {info['torch_threads']}, "
          f"load average {info['load_average_1_5_15']}")
    print("versions: " + ", ".join(f"{k} {v[k] or 'not installed'}" for k in v))
    for lib in LIBRARIES:
        if status[lib] != "ok":
            print(f"   {lib}: {status[lib]}")

    repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)
    env = Env(device, status, repeats, QUICK_WARMUP if args.quick else WARMUP,
              QUICK_MIN_SAMPLE_TIME if args.quick else MIN_SAMPLE_TIME, sizes[0])
    results: list[dict] = []
    for op in ("sample", "log_prob"):
        for kind in KINDS:
            for n in sizes:
                results.append(run_case(env, kind, op, n))
        print_table(results, op, repeats)
    env.models.clear()
    free_memory(device)
    train_batches = QUICK_TRAIN_BATCHES if args.quick else TRAIN_BATCHES
    for kind in TRAIN_KINDS:
        for n in train_batches:
            results.append(run_case(env, kind, "train", n))
    print_table(results, "train", repeats)
    print("\nours/peer = our time / peer time per round, median over rounds (pyroflows/zuko, numpyroflows/flowjax); "
          "< 1 means ours is faster. (D passes): the slow direction of the flow, one network pass per dimension.")

    if args.json is not None:
        config = {"input_dim": INPUT_DIM, "num_transforms": NUM_TRANSFORMS, "hidden": list(HIDDEN),
                  "count_bins": speed.COUNT_BINS, "bound": speed.BOUND, "lr": speed.LR, "sizes": sizes,
                  "train_batches": list(train_batches), "repeats": repeats, "quick": args.quick, "seed": SEED,
                  "argv": sys.argv[1:] if argv is None else list(argv)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "config": config, "status": status, "cases": results},
                                        indent=1))
        print(f"wrote {args.json}")

    broken = sorted({r["libraries"][lib]["status"] for r in results for lib in (TORCH_OURS, JAX_OURS)
                     if status[lib] == "ok" and r["libraries"][lib]["status"] not in ("ok", "OOM")})
    if broken:
        print(f"error: ours could not be benchmarked: {broken[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
