"""Speed benchmark: pyroflows against zuko, nflows and Pyro's built-in flows, all timed in the same run.

Usage::

    python benchmarks/speed.py [--repeats N] [--quick] [--json out.json] [--device cpu|cuda] [--threads T]

Four benchmarks on 8-dimensional data (see ``benchmarks/README.md`` for how to read the output):

* ``maf_train``:  one MAF training step on a batch of 512 (``zero_grad``, ``-log_prob(x).mean()``, ``backward``,
  Adam ``step``, lr 1e-3), 5 autoregressive layers, MADE hidden layers (64, 64);
* ``nsf_train``:  the same with rational-quadratic spline layers (8 bins on [-5, 5], identity/linear tails);
* ``maf_sample``: 4096 samples from the MAF under ``torch.no_grad()``;
* ``nsf_sample``: 4096 samples from the NSF under ``torch.no_grad()``.

Every library builds the same model, in the same orientation (density in one pass per layer, sampling in one pass
per dimension), with the same weight shapes (8 -> 64 -> 64 -> params per layer):

* pyroflows: ``flows.MAF(8, num_transforms=5, hidden_dims=(64, 64))`` and ``flows.NSF(..., count_bins=8,
  bound=5.0)``; the variable order is reversed between layers by the layers themselves.
* zuko: ``zuko.flows.MAF(8, transforms=5, hidden_features=(64, 64))`` and ``zuko.flows.NSF(..., bins=8)``
  (zuko's spline bound is 5, checked at build time); the order alternates between layers.
* nflows: ``Flow(CompositeTransform([...]), StandardNormal([8]))`` with 5 ``MaskedAffineAutoregressiveTransform``
  (resp. ``MaskedPiecewiseRationalQuadraticAutoregressiveTransform(num_bins=8, tails="linear", tail_bound=5)``)
  and a ``ReversePermutation`` between layers, no batch norm. nflows' MADE is an un-activated masked input layer
  (8 -> hidden_features), then ``num_blocks`` blocks, then the output layer. ``hidden_features=64, num_blocks=1,
  use_residual_blocks=False`` gives exactly the three weight matrices of hidden (64, 64) (same parameter count as
  the others) with one ReLU instead of two; nflows' defaults (two residual blocks, i.e. six matrices) or
  ``num_blocks=2`` would cost nflows an extra matmul or more, so this mapping is the strict one for pyroflows.
* Pyro: ``affine_autoregressive(8, hidden_dims=[64, 64])`` (resp. ``spline_autoregressive(8, hidden_dims=[64,
  64], count_bins=8, bound=5)``, Pyro's linear-order spline, which has an extra set of ``count_bins`` parameters
  per dimension) x5 with a reversing ``Permute`` between layers. Pyro's autoregressive transforms are
  IAF-oriented (the forward map samples in one pass, the inverse loops over dimensions), so they go into the
  ``TransformedDistribution`` inverted (``t.inv``): ``log_prob`` then runs each layer's one-pass map, as in the
  other libraries. Each Pyro layer's network also uses its own random variable order (``AutoRegressiveNN``'s
  default), which costs nothing extra.

Pyro's cache: Pyro transforms remember their last ``(input, output)`` pair by tensor identity (``cache_size=1``);
within one ``log_prob`` this is what lets ``log_abs_det_jacobian`` reuse the forward pass. Across training steps it
would hand back the previous step's output (whose graph ``backward`` has already freed) if the very same batch
tensor were scored again, and these transforms have no public ``clear_cache``. So Pyro's step scores
``x.clone()``, a fresh tensor (a 16 KiB copy, negligible), which misses the stale entry.

``maf_train`` also times a reference row that is not a library, ``floor (unmasked)``: the same five 8 -> 64 -> 64 ->
16 networks and affine maps with the masks (and everything else a library adds) removed. No MAF of this architecture
can train faster than this floor; ``ours/floor`` says how much of a step is overhead above it.

For pyroflows and zuko ``flow()`` (building the distribution) is called inside every step and every sampling call,
as in their documented training loops.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from common import (
    Benchmark,
    Case,
    device_sync,
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

Tensor = torch.Tensor

INPUT_DIM = 8
BATCH = 512
NUM_TRANSFORMS = 5
HIDDEN = (64, 64)
COUNT_BINS = 8
BOUND = 5.0
LR = 1e-3
NUM_SAMPLES = 4096
CHECK_SAMPLES = 256  # the sanity check only needs a few samples
PERTURB = 0.05  # parameter noise for the sampling check (moves the flows away from the identity)
CONSISTENCY_TOL = 1e-2  # nats, float32; a wrong sampler is off by O(1)
SEED = 0

OURS = "pyroflows"
FLOOR = "floor (unmasked)"  # a reference row, not a library: see build_floor

# ================================================================================================ models


@dataclass
class Model:
    """A built flow, seen through the operations the benchmarks need."""

    parameters: list[torch.nn.Parameter]
    log_prob: Callable[[Tensor], Tensor]  # (BATCH, INPUT_DIM) -> (BATCH,)
    sample: Callable[[int], Tensor]  # n -> (n, INPUT_DIM)
    #: n -> (samples, their log-density), drawn like ``sample``; used only by the sanity check (None: not offered)
    sample_and_log_prob: Callable[[int], tuple[Tensor, Tensor]] | None = None

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters)


def build_pyroflows(kind: str, device: torch.device) -> Model:
    """pyroflows' MAF / NSF recipe."""
    from pyroflows import flows

    if kind == "maf":
        flow = flows.MAF(INPUT_DIM, num_transforms=NUM_TRANSFORMS, hidden_dims=HIDDEN)
    else:
        flow = flows.NSF(INPUT_DIM, num_transforms=NUM_TRANSFORMS, hidden_dims=HIDDEN, count_bins=COUNT_BINS,
                         bound=BOUND)
    flow.to(device)
    return Model(list(flow.parameters()), lambda x: flow().log_prob(x), lambda n: flow().sample((n,)),
                 lambda n: flow().rsample_and_log_prob((n,)))


def build_zuko(kind: str, device: torch.device) -> Model:
    """zuko's MAF / NSF (zuko's spline bound is not an argument of NSF: check it is the default we assume)."""
    import zuko

    if kind == "maf":
        flow = zuko.flows.MAF(INPUT_DIM, transforms=NUM_TRANSFORMS, hidden_features=HIDDEN)
    else:
        bound = inspect.signature(zuko.transforms.MonotonicRQSTransform).parameters["bound"].default
        if bound != BOUND:
            raise RuntimeError(f"zuko's spline bound is {bound}, the benchmark assumes {BOUND}")
        flow = zuko.flows.NSF(INPUT_DIM, transforms=NUM_TRANSFORMS, hidden_features=HIDDEN, bins=COUNT_BINS)
    flow.to(device)
    return Model(list(flow.parameters()), lambda x: flow().log_prob(x), lambda n: flow().sample((n,)),
                 lambda n: flow().rsample_and_log_prob((n,)))


def build_nflows(kind: str, device: torch.device) -> Model:
    """An nflows ``Flow`` with the MADE sized to hidden (64, 64) (see the module docstring for the mapping)."""
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms import (
        CompositeTransform,
        MaskedAffineAutoregressiveTransform,
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
        ReversePermutation,
    )

    made = dict(features=INPUT_DIM, hidden_features=HIDDEN[0], num_blocks=len(HIDDEN) - 1,
                use_residual_blocks=False, use_batch_norm=False)
    layers = []
    for i in range(NUM_TRANSFORMS):
        if i > 0:
            layers.append(ReversePermutation(INPUT_DIM))
        if kind == "maf":
            layers.append(MaskedAffineAutoregressiveTransform(**made))
        else:
            layers.append(MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                **made, num_bins=COUNT_BINS, tails="linear", tail_bound=BOUND))
    flow = Flow(CompositeTransform(layers), StandardNormal([INPUT_DIM])).to(device)
    return Model(list(flow.parameters()), flow.log_prob, flow.sample, flow.sample_and_log_prob)


def build_pyro(kind: str, device: torch.device) -> Model:
    """Pyro's autoregressive transforms x5 with reversing permutations, inverted into MAF orientation."""
    import pyro.distributions as pdist
    import pyro.distributions.transforms as T

    layers = []
    for i in range(NUM_TRANSFORMS):
        if i > 0:
            layers.append(T.Permute(torch.arange(INPUT_DIM - 1, -1, -1, device=device)))
        if kind == "maf":
            layers.append(T.affine_autoregressive(INPUT_DIM, hidden_dims=list(HIDDEN)))
        else:
            layers.append(T.spline_autoregressive(INPUT_DIM, hidden_dims=list(HIDDEN), count_bins=COUNT_BINS,
                                                  bound=BOUND))
    modules = torch.nn.ModuleList([t for t in layers if isinstance(t, torch.nn.Module)]).to(device)
    base = pdist.Normal(torch.zeros(INPUT_DIM, device=device), torch.ones(INPUT_DIM, device=device)).to_event(1)
    # data -> noise runs layers[0] first, through each layer's one-pass forward map
    dist = pdist.TransformedDistribution(base, [t.inv for t in reversed(layers)])
    # x.clone(): a fresh tensor, so the first layer's identity cache never returns last step's (freed) output
    return Model(list(modules.parameters()), lambda x: dist.log_prob(x.clone()), lambda n: dist.sample((n,)))


def build_floor(kind: str, device: torch.device) -> Model:
    """Not a flow: the MAF's arithmetic with the autoregressive masks removed (5 x plain MLP 8 -> 64 -> 64 -> 16, an
    affine map of the data with ``exp`` scales, the order reversed between layers, a standard normal log-density).
    It does the same matrix products as every MAF here with no masking, no parameter handling and no checks: the
    floor under what any MAF training step of this size can cost on this machine."""
    if kind != "maf":
        raise NotImplementedError("the floor is defined for the affine MAF only")
    nets = torch.nn.ModuleList([
        torch.nn.Sequential(torch.nn.Linear(INPUT_DIM, HIDDEN[0]), torch.nn.ReLU(), torch.nn.Linear(*HIDDEN),
                            torch.nn.ReLU(), torch.nn.Linear(HIDDEN[1], 2 * INPUT_DIM))
        for _ in range(NUM_TRANSFORMS)]).to(device)

    def log_prob(x: Tensor) -> Tensor:
        z, total = x, 0.0
        for i, net in enumerate(nets):
            if i > 0:
                z = z.flip(-1)
            shift, log_scale = net(z).chunk(2, -1)
            z = (z - shift) * torch.exp(-log_scale)
            total = total - log_scale.sum(-1)
        return total - 0.5 * (z * z).sum(-1) - INPUT_DIM * 0.5 * math.log(2 * math.pi)

    return Model(list(nets.parameters()), log_prob, lambda n: torch.randn(n, INPUT_DIM, device=device))


@dataclass(frozen=True)
class Library:
    name: str
    module: str  # what must import for the library to count as installed
    build: Callable[[str, torch.device], Model]
    only: tuple[str, ...] | None = None  # the benchmark keys it takes part in (None: all)


LIBRARIES = (
    Library(OURS, "pyroflows", build_pyroflows),
    Library("zuko", "zuko", build_zuko),
    Library("nflows", "nflows", build_nflows),
    Library("pyro", "pyro", build_pyro),
    Library(FLOOR, "torch", build_floor, ("maf_train",)),
)

# ================================================================================================ benchmarks


BENCHMARKS = (
    Benchmark("maf_train", f"MAF training step (batch {BATCH})", "maf", "train"),
    Benchmark("nsf_train", f"NSF training step (batch {BATCH})", "nsf", "train"),
    Benchmark("maf_sample", f"MAF sampling ({NUM_SAMPLES} points, no_grad)", "maf", "sample"),
    Benchmark("nsf_sample", f"NSF sampling ({NUM_SAMPLES} points, no_grad)", "nsf", "sample"),
)

#: The project issue's targets: (benchmark, peer, largest acceptable ours/peer ratio).
TARGETS = (
    ("maf_train", "nflows", 0.7),
    ("nsf_train", "zuko", 0.5),
    ("nsf_sample", "zuko", 0.5),
)

REPEATS = {"train": 30, "sample": 10}
WARMUP = {"train": 5, "sample": 2}
QUICK_REPEATS = 3
MIN_SAMPLE_TIME = 0.02  # seconds: fast calls are repeated back to back until one timing sample lasts this long
QUICK_MIN_SAMPLE_TIME = 0.005


def make_op(model: Model, op: str, x: Tensor) -> Callable[[], object]:
    """The unit of work that gets timed: one optimizer step on ``x``, or one batch of samples."""
    if op == "train":
        optimizer = torch.optim.Adam(model.parameters, lr=LR)

        def train_step() -> None:
            optimizer.zero_grad()
            loss = -model.log_prob(x).mean()
            loss.backward()
            optimizer.step()

        return train_step

    def draw() -> Tensor:
        with torch.no_grad():
            return model.sample(NUM_SAMPLES)

    return draw


def check(model: Model, op: str, x: Tensor) -> str | None:
    """Why ``model`` is unfit to benchmark, or ``None`` when it looks sound.

    Always: ``log_prob`` of the benchmark batch has the right shape and is finite. For the sampling benchmarks also:
    samples have the right shape and are finite, and, where the library offers ``sample_and_log_prob``, after
    moving the parameters away from the near-identity initialisation (so that a sampler which returned its base
    noise could not pass), ``sample`` draws the same points as ``sample_and_log_prob`` under the same seed and
    ``log_prob`` of those points matches the log-density returned with them: the timed sampler really inverts the
    density. ``model`` is modified; build a separate instance for timing.
    """
    with torch.no_grad():
        lp = model.log_prob(x)
        if tuple(lp.shape) != (x.shape[0],):
            return f"log_prob has shape {tuple(lp.shape)}, expected ({x.shape[0]},)"
        if not bool(torch.isfinite(lp).all()):
            return "log_prob is not finite on the benchmark batch"
        if op != "sample":
            return None
        s = model.sample(CHECK_SAMPLES)
        if tuple(s.shape) != (CHECK_SAMPLES, INPUT_DIM):
            return f"sample has shape {tuple(s.shape)}, expected ({CHECK_SAMPLES}, {INPUT_DIM})"
        if not bool(torch.isfinite(s).all()):
            return "samples are not finite"
        if model.sample_and_log_prob is None:
            return None
        gen = torch.Generator().manual_seed(SEED)
        for p in model.parameters:
            p.add_(PERTURB * torch.randn(p.shape, generator=gen).to(p))
        torch.manual_seed(SEED + 1)
        s = model.sample(CHECK_SAMPLES)
        torch.manual_seed(SEED + 1)
        s2, lp2 = model.sample_and_log_prob(CHECK_SAMPLES)
        if not torch.allclose(s, s2, rtol=1e-4, atol=1e-4):
            return "sample() and sample_and_log_prob() draw different points under the same seed"
        err = float((model.log_prob(s2) - lp2).abs().max())
        if not err <= CONSISTENCY_TOL:
            return f"log_prob of its own samples is off by {err:.3g}: sampling does not invert the density"
    return None


def run_benchmark(bench: Benchmark, libraries: Sequence[Library], status: dict[str, str], device: torch.device,
                  x: Tensor, repeats: int, warmup: int, min_time: float) -> dict:
    """Check, build, warm up and time every available library on ``bench``; returns the JSON-able figures."""
    sync = device_sync(device)
    entries: dict[str, dict] = {}
    cases: list[Case] = []
    for lib in libraries:
        if lib.only is not None and bench.key not in lib.only:
            continue
        entry = entries[lib.name] = {"status": status[lib.name]}
        if status[lib.name] != "ok":
            continue
        try:
            torch.manual_seed(SEED)
            check_model = lib.build(bench.kind, device)  # a separate instance keeps the timed one's first call honest
            problem = check(check_model, bench.op, x)
            if problem is not None:
                entry["status"] = f"failed check: {problem}"
                continue
            entry["checked"] = "finite log_prob" if bench.op == "train" else (
                "finite log_prob and samples; sample/log_prob consistency" if check_model.sample_and_log_prob
                else "finite log_prob and samples (no sample_and_log_prob to check consistency against)")
            torch.manual_seed(SEED)
            model = lib.build(bench.kind, device)
            entry["params"] = model.num_params
            case = Case(lib.name, make_op(model, bench.op, x))
            prepare(case, sync, warmup, min_time)
        except Exception as err:  # a peer's API change must not stop the run
            entry["status"] = f"error: {type(err).__name__}: {err}"
            continue
        cases.append(case)

    torch.manual_seed(SEED)
    run_interleaved(cases, sync, repeats)

    for case in cases:
        e = entries[case.name]
        stats = summarize(case.times_s)
        e.update(first_call_ms=case.first_call_s * 1e3, median_ms=stats["median"] * 1e3, q25_ms=stats["q25"] * 1e3,
                 q75_ms=stats["q75"] * 1e3, calls_per_sample=case.inner, times_ms=[t * 1e3 for t in case.times_s])

    ratios: dict[str, dict] = {}
    by_name = {c.name: c for c in cases}
    if OURS in by_name:
        ours = by_name[OURS]
        for name, peer in by_name.items():
            if name == OURS:
                continue
            r = per_round_ratios(ours.times_s, peer.times_s)
            ratios[name] = {**summarize(r), "ratio_of_medians": entries[OURS]["median_ms"] / entries[name]["median_ms"],
                            "per_round": r}
    return {"title": bench.title, "kind": bench.kind, "op": bench.op, "repeats": repeats, "warmup": warmup,
            "libraries": entries, "ratios_ours_over_peer": ratios}


# ================================================================================================ report


def print_benchmark(result: dict) -> None:
    print(f"\n== {result['title']}: median of {result['repeats']} interleaved rounds")
    rows, skipped = [], []
    for name, e in result["libraries"].items():
        if e["status"] != "ok":
            skipped.append(f"   {name}: {e['status']}")
            continue
        ratio = "(ours)" if name == OURS else fmt_ratio(result["ratios_ours_over_peer"].get(name))
        rows.append([name, str(e["params"]), fmt_ms(e["first_call_ms"] / 1e3), fmt_ms(e["median_ms"] / 1e3),
                     f"{fmt_ms(e['q25_ms'] / 1e3)}-{fmt_ms(e['q75_ms'] / 1e3)}", str(e["calls_per_sample"]), ratio])
    if rows:
        print(format_table(["library", "params", "first call ms", "median ms", "IQR ms", "calls/sample",
                            "ours/peer [IQR]"], rows))
    for line in skipped:
        print(line)


def print_machine(info: dict) -> None:
    v = info["versions"]
    print(f"pyroflows speed benchmark  {info['date_utc']}  device={info['device']}"
          + (f" ({info['gpu']})" if info["gpu"] else ""))
    print(f"cpu: {info['cpu_model']}, {info['usable_cores']} usable cores, torch threads {info['torch_threads']}, "
          f"load average {info['load_average_1_5_15']}")
    print("versions: " + ", ".join(f"{k} {v[k] or 'not installed'}" for k in v))
    load = info["load_average_1_5_15"]
    if load and info["usable_cores"] and load[0] > 0.75 * info["usable_cores"]:
        hint = "; torch's thread pool may contend with other processes: try --threads 1" \
            if info["torch_threads"] > 1 else ""
        print(f"warning: the machine is busy (load {load[0]:.1f} on {info['usable_cores']} cores): timings will be "
              f"noisy, compare the per-round ratios rather than the times{hint}")


# ================================================================================================ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timing rounds per benchmark (default {REPEATS['train']} for training steps, "
                        f"{REPEATS['sample']} for sampling; {QUICK_REPEATS} with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: {QUICK_REPEATS} rounds, minimal warm-up, 1 torch thread unless --threads "
                        "is given")
    p.add_argument("--json", type=Path, default=None, help="write every figure and the machine info to this file")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    p.add_argument("--bench", nargs="+", choices=[b.key for b in BENCHMARKS], default=None,
                   help="run only these benchmarks (default: all)")
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick and args.threads is None:
        args.threads = 1  # a smoke test must not hinge on thread-pool contention on a busy machine
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    device = torch.device(args.device)

    status = {lib.name: optional_import(lib.module)[1] for lib in LIBRARIES}
    info = machine_info(device)
    print_machine(info)

    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(BATCH, INPUT_DIM, generator=gen).to(device)

    results: dict[str, dict] = {}
    for bench in BENCHMARKS:
        if args.bench is not None and bench.key not in args.bench:
            continue
        repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS[bench.op])
        warmup = 1 if args.quick else WARMUP[bench.op]
        min_time = QUICK_MIN_SAMPLE_TIME if args.quick else MIN_SAMPLE_TIME
        results[bench.key] = run_benchmark(bench, LIBRARIES, status, device, x, repeats, warmup, min_time)
        print_benchmark(results[bench.key])

    targets = evaluate_targets(results, TARGETS, OURS)
    print_targets(targets, BENCHMARKS)
    print("\nratio = our time / peer time, computed per round and summarised by the median [quartiles]; "
          "< 1 means pyroflows is faster")

    if args.json is not None:
        config = {"input_dim": INPUT_DIM, "batch": BATCH, "num_transforms": NUM_TRANSFORMS, "hidden": list(HIDDEN),
                  "count_bins": COUNT_BINS, "bound": BOUND, "lr": LR, "num_samples": NUM_SAMPLES, "seed": SEED,
                  "quick": args.quick, "threads_set": args.threads, "argv": sys.argv[1:]}
        payload = {"machine": info, "config": config, "benchmarks": results, "targets": targets}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1))
        print(f"wrote {args.json}")

    ours_broken = [r["libraries"][OURS]["status"] for r in results.values() if r["libraries"][OURS]["status"] != "ok"]
    if ours_broken:
        print(f"error: {OURS} could not be benchmarked: {ours_broken[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
