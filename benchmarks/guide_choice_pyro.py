"""Which flow should ``pyroflows.infer.AutoFlowGuide`` use by default? Accuracy for the time on two hard posteriors.

Every candidate gets the same budget: ``--steps`` SVI steps (default 2000) of ``Trace_ELBO`` with ``--particles``
vectorized particles (default 8), ``ClippedAdam`` with lr 1e-2 decaying geometrically to 1e-3 and gradient-norm clip
10, one torch thread. Wall time is the training loop only. Pyro's own ``AutoMultivariateNormal`` and ``AutoIAFNormal``
run under the same budget as peers.

Posteriors (10 unconstrained dimensions each):

* Neal's funnel: ``v ~ N(0, 3)``, ``x_i | v ~ N(0, exp(v/2))``, ``i = 1..9``. Exact moments: ``v`` has mean 0, sd 3;
  ``x_i`` has mean 0 and sd ``sqrt(E[exp v]) = sqrt(exp(3²/2)) = exp(9/4) ≈ 9.488``. Also reported: the sd of the
  whitened ``x_i exp(-v/2)``, exactly 1 (it shows whether the funnel's shape is learned, and, unlike the sd of
  ``x_i``, whose kurtosis is ``3 e^9``, it has a small Monte Carlo error).
* Eight schools, non-centred (posteriordb ``eight_schools-eight_schools_noncentered``: ``mu ~ N(0, 5)``,
  ``tau ~ HalfCauchy(5)``, ``theta_trans ~ N(0, 1)``, ``y_j ~ N(mu + tau theta_trans_j, sigma_j)``), scored on
  ``mu``, ``tau``, ``theta_j = mu + tau theta_trans_j`` against the 10 000 Stan reference draws.

Scores per run: ``max |mean error| / sd_ref`` and ``max |log(sd / sd_ref)|`` over the scalar components, PSIS k̂ of
``log p - log q`` (Yao et al. 2018; 5000 draws), wall time. The data of eight schools is embedded below; the
reference draws are read from ``--reference`` (posteriordb, BSD-3) when present, else that posterior is skipped.

    python benchmarks/guide_choice_pyro.py                       # all candidates, 2 seeds
    python benchmarks/guide_choice_pyro.py --quick               # 200 steps, 1 seed, 3 candidates
    python benchmarks/guide_choice_pyro.py --json guide_choice.json
    python benchmarks/guide_choice_pyro.py --timing              # ms per step only, candidates interleaved
    python benchmarks/guide_choice_pyro.py --only "iaf x3 h40" --first-seed 2 --seeds 2
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal
from pyro.infer.importance import psis_diagnostic
from pyro.optim import ClippedAdam
from torch.distributions import biject_to

from pyroflows.infer import AutoFlowGuide

SIGMA_V = 3.0
SD_X = math.exp(SIGMA_V**2 / 4)  # sqrt(E[exp v]) = sqrt(exp(σ²/2)) = exp(9/4)

SCHOOLS_Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
DEFAULT_REFERENCE = (Path(__file__).resolve().parents[2] / "shared" / "data" / "posteriordb"
                     / "eight_schools-eight_schools_noncentered" / "reference_draws.json")


# --------------------------------------------------------------------------------------------------------- models
def funnel() -> None:
    v = pyro.sample("v", dist.Normal(0.0, SIGMA_V))
    scale = torch.exp(v / 2).unsqueeze(-1).expand(v.shape + (9,))
    pyro.sample("x", dist.Normal(torch.zeros_like(scale), scale).to_event(1))


def schools() -> None:
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    theta_trans = pyro.sample("theta_trans", dist.Normal(0.0, 1.0).expand([8]).to_event(1))
    theta = mu.unsqueeze(-1) + tau.unsqueeze(-1) * theta_trans
    pyro.sample("y", dist.Normal(theta, SCHOOLS_SIGMA).to_event(1), obs=SCHOOLS_Y)


def _funnel_score(draws: dict[str, torch.Tensor]) -> dict[str, float]:
    v, x = draws["v"].double(), draws["x"].double()
    mean_err = max(abs(v.mean().item()) / SIGMA_V, (x.mean(0).abs() / SD_X).max().item())
    log_sd = [math.log(v.std().item() / SIGMA_V)] + torch.log(x.std(0) / SD_X).tolist()
    white = x * torch.exp(-v / 2).unsqueeze(-1)
    return {"mean_err": mean_err, "log_sd_err": max(abs(s) for s in log_sd), "sd_v": v.std().item(),
            "log_sd_v": log_sd[0], "log_sd_x": max(log_sd[1:], key=abs),
            "white_log_sd": torch.log(white.std(0)).abs().max().item()}


def _schools_reference(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.exists():
        return None
    chains = json.loads(path.read_text())
    names = ["mu", "tau"] + [f"theta[{j}]" for j in range(1, 9)]
    ref = torch.tensor([[v for chain in chains for v in chain[n]] for n in names], dtype=torch.float64).T
    return {"mean": ref.mean(0), "sd": ref.std(0)}


def _schools_score(draws: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    mu, tau, tt = draws["mu"].double(), draws["tau"].double(), draws["theta_trans"].double()
    q = torch.cat([mu[:, None], tau[:, None], mu[:, None] + tau[:, None] * tt], dim=1)
    return {"mean_err": ((q.mean(0) - ref["mean"]).abs() / ref["sd"]).max().item(),
            "log_sd_err": torch.log(q.std(0) / ref["sd"]).abs().max().item(),
            "log_sd_tau": math.log(q[:, 1].std().item() / ref["sd"][1].item())}


# --------------------------------------------------------------------------------------------------------- guides
def _candidates() -> dict[str, Callable[[Callable], object]]:
    c: dict[str, Callable[[Callable], object]] = {}
    for name, kw in [
        ("iaf", {}), ("spline_iaf", {}), ("nsf", {}), ("realnvp", {}), ("spline_coupling", {}),
    ]:
        for k in (2, 3):
            c[f"{name} x{k} h40"] = lambda m, name=name, k=k, kw=kw: AutoFlowGuide(m, name, num_transforms=k, **kw)
    c["iaf x3 h64"] = lambda m: AutoFlowGuide(m, "iaf", num_transforms=3, hidden_dims=(64, 64))
    c["spline_iaf x2 h64"] = lambda m: AutoFlowGuide(m, "spline_iaf", num_transforms=2, hidden_dims=(64, 64))
    c["iaf x5 h40"] = lambda m: AutoFlowGuide(m, "iaf", num_transforms=5)
    c["iaf x3 h40 init_scale 1"] = lambda m: AutoFlowGuide(m, "iaf", num_transforms=3, init_scale=1.0)
    c["iaf x5 h64"] = lambda m: AutoFlowGuide(m, "iaf", num_transforms=5, hidden_dims=(64, 64))
    c["Pyro AutoMultivariateNormal"] = lambda m: AutoMultivariateNormal(m)
    c["Pyro AutoIAFNormal x2 h40"] = lambda m: AutoIAFNormal(m, hidden_dim=[40, 40], num_transforms=2)
    return c


QUICK = ["iaf x3 h40", "spline_iaf x2 h40", "Pyro AutoMultivariateNormal"]


def _draws(guide, n: int) -> dict[str, torch.Tensor]:
    """``n`` posterior draws of every latent site in constrained space, for any ``AutoContinuous`` guide."""
    with torch.no_grad():
        u = guide.get_posterior().sample((n,))
        return {site["name"]: biject_to(site["fn"].support)(value) for site, value in guide._unpack_latent(u)}


def run_one(model: Callable, make_guide: Callable, steps: int, particles: int, seed: int) -> dict[str, float]:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = make_guide(model)
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=0)
    optim = ClippedAdam({"lr": 1e-2, "lrd": 0.1 ** (1 / steps), "clip_norm": 10.0})
    svi = SVI(model, guide, optim, elbo)
    svi.step()  # builds the guide; not timed
    start = time.perf_counter()
    losses = [svi.step() for _ in range(steps - 1)]
    wall = time.perf_counter() - start
    k_hat = psis_diagnostic(model, guide, num_particles=5000, max_plate_nesting=0)
    return {"wall_s": wall, "final_loss": sum(losses[-100:]) / len(losses[-100:]), "k_hat": float(k_hat),
            "draws": _draws(guide, 100_000)}


def step_times(model: Callable, candidates: dict[str, Callable], particles: int, rounds: int = 7,
               steps: int = 50) -> dict[str, float]:
    """Median milliseconds per SVI step, the candidates' rounds interleaved so that they share the machine's load."""
    svis = {}
    for cname, make in candidates.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = make(model)
        elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=0)
        svis[cname] = SVI(model, guide, ClippedAdam({"lr": 1e-3}), elbo)
        svis[cname].step()
    times: dict[str, list[float]] = {c: [] for c in svis}
    for _ in range(rounds):
        for cname, svi in svis.items():
            start = time.perf_counter()
            for _ in range(steps):
                svi.step()
            times[cname].append(1e3 * (time.perf_counter() - start) / steps)
    return {c: sorted(t)[len(t) // 2] for c, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    parser.add_argument("--posterior", nargs="*", default=["funnel", "schools"], choices=["funnel", "schools"])
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--quick", action="store_true", help="200 steps, 1 seed, 3 candidates")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--timing", action="store_true",
                        help="only time the SVI step of each candidate (interleaved rounds) on both posteriors")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.steps, args.seeds = 200, 1
        args.only = args.only or QUICK
    candidates = {k: v for k, v in _candidates().items() if not args.only or k in args.only}
    ref = _schools_reference(args.reference)
    posteriors = []
    if "funnel" in args.posterior:
        posteriors.append(("funnel", funnel, _funnel_score))
    if "schools" in args.posterior:
        if ref is None:
            print(f"eight schools skipped: no reference draws at {args.reference}")
        else:
            posteriors.append(("schools", schools, lambda d: _schools_score(d, ref)))
    print(f"# {args.steps} steps x {args.particles} particles, ClippedAdam lr 1e-2 -> 1e-3, 1 thread, "
          f"torch {torch.__version__}, pyro {pyro.__version__}, {platform.processor() or platform.machine()}")
    print(f"# funnel exact: v mean 0 sd {SIGMA_V}; x_i mean 0 sd exp(9/4) = {SD_X:.4f}")
    if args.timing:
        for pname, model, _ in posteriors:
            print(f"\n## {pname}: median ms per step ({args.particles} particles, interleaved rounds)")
            for cname, ms in step_times(model, candidates, args.particles).items():
                print(f"| {cname} | {ms:.2f} |", flush=True)
        return
    records = []
    for pname, model, score in posteriors:
        print(f"\n## {pname}\n| guide | seed | wall s | max mean err/sd | max abs log sd ratio | k-hat | extra |")
        print("|---|---|---|---|---|---|---|")
        for cname, make in candidates.items():
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                res = run_one(model, make, args.steps, args.particles, seed)
                s = score(res.pop("draws"))
                rec = {"posterior": pname, "guide": cname, "seed": seed, **res, **s}
                records.append(rec)
                extra = ", ".join(f"{k} {v:+.3f}" for k, v in s.items() if k not in ("mean_err", "log_sd_err"))
                print(f"| {cname} | {seed} | {res['wall_s']:.1f} | {s['mean_err']:.3f} | {s['log_sd_err']:.3f} | "
                      f"{res['k_hat']:.2f} | {extra} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "particles": args.particles, "records": records},
                                        indent=1))


if __name__ == "__main__":
    main()
