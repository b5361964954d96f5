"""Eight schools: NUTS vs AutoNormal vs AutoFlowGuide, in Pyro and in NumPyro, with ArviZ diagnostics.

The non-centred eight-schools model (Rubin 1981; Gelman et al., BDA3 §5.5) is the classic small hierarchical
posterior: ``mu ~ N(0, 5)``, ``tau ~ HalfCauchy(5)``, ``theta_j = mu + tau·eta_j`` with ``eta_j ~ N(0, 1)``,
``y_j ~ N(theta_j, sigma_j)``. Its funnel between ``tau`` and ``eta`` is what a mean-field guide misses.

For each backend the script runs NUTS (the reference), then SVI with ``AutoNormal`` and with ``AutoFlowGuide`` in the
loop most users write (5000 steps of ``Trace_ELBO`` with one particle, ``ClippedAdam(lr=5e-3, clip_norm=10)``;
``pyroflows.run_svi`` in Pyro, ``svi.run`` in NumPyro), changing nothing but the guide; ``AutoFlowGuide`` starts at
the Laplace approximation and trains in coordinates whitened by it (``warm_start="auto"``, its default). It prints a
table: wall time, posterior
mean and sd of ``mu`` and ``tau``, the largest standardized error of any mean against NUTS, the largest |log sd
ratio|, and PSIS k̂ with its verdict (``vi_diagnostics``). The guides' draws go to ArviZ with
``to_inference_data`` and two figures are written: ``examples/out/eight_schools_forest_<backend>.png`` (forest plot
of the three methods) and ``examples/out/eight_schools_pair_<backend>.png`` (``log tau`` against ``theta[0]``: NUTS
vs the two guides).

Run from the repository root (about two minutes on two CPU cores)::

    python examples/eight_schools.py [--backend pyro numpyro] [--steps 5000]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import matplotlib

matplotlib.use("Agg")  # no display needed; must come before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from flowcommon import arviz_compat  # noqa: E402  (ArviZ 0.x or 1.x, whichever is installed)

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]
DRAWS = 4000  # posterior draws per method
KHAT_DRAWS = 20_000  # draws behind PSIS k̂ (its estimate from a few thousand draws varies by ±0.1)
LR, CLIP = 5e-3, 10.0  # ClippedAdam at a constant rate, one particle: the users' loop
SEED = 0


# ================================================================================================ Pyro


def pyro_model(sigma, y=None):
    import pyro
    import pyro.distributions as dist

    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", len(sigma)):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * eta)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def run_pyro(steps: int) -> dict:
    import pyro
    import torch
    from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal
    from pyro.optim import ClippedAdam

    import pyroflows
    from pyroflows.diagnostics import to_inference_data, vi_diagnostics

    torch.set_num_threads(1)
    sigma, y = torch.tensor(SIGMA), torch.tensor(Y)
    results = {}

    pyro.set_rng_seed(SEED)
    start = time.perf_counter()
    mcmc = MCMC(NUTS(pyro_model, jit_compile=True, ignore_jit_warnings=True), num_samples=DRAWS // 4,
                warmup_steps=500, num_chains=1, disable_progbar=True)
    for _ in range(4):  # four sequential chains (multiprocessing chains need a __main__ guard and more memory)
        mcmc.run(sigma, y)
        results.setdefault("_chains", []).append({k: v.numpy() for k, v in mcmc.get_samples().items()})
    chains = results.pop("_chains")
    draws = {k: np.stack([c[k] for c in chains]) for k in ("mu", "tau", "eta")}
    draws["theta"] = draws["mu"][..., None] + draws["tau"][..., None] * draws["eta"]
    results["NUTS"] = {"time": time.perf_counter() - start, "idata": arviz_compat.from_draws(draws), "khat": None}

    for name, make in (("AutoNormal", AutoNormal), ("AutoFlowGuide", pyroflows.AutoFlowGuide)):
        pyro.clear_param_store()
        pyro.set_rng_seed(SEED)
        guide = make(pyro_model)
        svi = SVI(pyro_model, guide, ClippedAdam({"lr": LR, "clip_norm": CLIP}), Trace_ELBO())
        start = time.perf_counter()
        pyroflows.run_svi(svi, sigma, y, num_steps=steps, progress=False)
        elapsed = time.perf_counter() - start
        diag = vi_diagnostics(guide, pyro_model, sigma, y, num_samples=KHAT_DRAWS)
        idata = to_inference_data(guide, pyro_model, sigma, y, num_samples=DRAWS, num_chains=4)
        results[name] = {"time": elapsed, "idata": idata, "khat": diag.khat, "verdict": diag.verdict}
    return results


# ================================================================================================ NumPyro


def numpyro_model(sigma, y=None):
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", len(sigma)):
        eta = numpyro.sample("eta", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * eta)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def run_numpyro(steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpyro
    from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    import numpyroflows
    from numpyroflows.diagnostics import to_inference_data, vi_diagnostics

    sigma, y = jnp.asarray(SIGMA), jnp.asarray(Y)
    results = {}
    start = time.perf_counter()
    mcmc = MCMC(NUTS(numpyro_model), num_warmup=1000, num_samples=DRAWS // 4, num_chains=4,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.key(SEED), sigma, y)
    results["NUTS"] = {"time": time.perf_counter() - start, "idata": arviz_compat.arviz().from_numpyro(mcmc),
                       "khat": None}

    for name, make in (("AutoNormal", AutoNormal), ("AutoFlowGuide", numpyroflows.AutoFlowGuide)):
        guide = make(numpyro_model)
        svi = SVI(numpyro_model, guide, numpyro.optim.ClippedAdam(LR, clip_norm=CLIP), Trace_ELBO())
        start = time.perf_counter()
        res = svi.run(jax.random.key(SEED), steps, sigma, y, progress_bar=False)
        jax.block_until_ready(res.params)
        elapsed = time.perf_counter() - start
        diag = vi_diagnostics(guide, numpyro_model, sigma, y, params=res.params, rng_key=jax.random.key(1),
                              num_samples=KHAT_DRAWS)
        idata = to_inference_data(guide, numpyro_model, sigma, y, params=res.params, rng_key=jax.random.key(2),
                                  num_samples=DRAWS, num_chains=4)
        results[name] = {"time": elapsed, "idata": idata, "khat": diag.khat, "verdict": diag.verdict}
    return results


# ================================================================================================ report


def _flat(idata) -> dict[str, np.ndarray]:
    post = idata.posterior
    out = {"mu": post["mu"].values.ravel(), "tau": post["tau"].values.ravel()}
    theta = post["theta"].values.reshape(-1, 8)
    out.update({f"theta[{j}]": theta[:, j] for j in range(8)})
    return out


def report(backend: str, results: dict) -> None:
    ref = _flat(results["NUTS"]["idata"])
    print(f"\n== {backend}: eight schools (non-centred), {DRAWS} draws per method")
    head = f"{'method':<14} {'time s':>7} {'mu mean (sd)':>15} {'tau mean (sd)':>15} {'max |dmean|/sd':>15} " \
           f"{'max |log sd|':>13} {'khat':>6}  verdict"
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        f = _flat(r["idata"])
        mean_err = max(abs(f[k].mean() - ref[k].mean()) / ref[k].std() for k in ref)
        log_sd = max(abs(math.log(f[k].std() / ref[k].std())) for k in ref)
        khat = "-" if r["khat"] is None else f"{r['khat']:.2f}"
        verdict = "reference" if r["khat"] is None else r["verdict"].split(":")[0]
        print(f"{name:<14} {r['time']:>7.1f} {f['mu'].mean():>7.2f} ({f['mu'].std():4.2f}) "
              f"{f['tau'].mean():>7.2f} ({f['tau'].std():4.2f}) {mean_err:>15.3f} {log_sd:>13.3f} {khat:>6}  "
              f"{verdict}")


def figures(backend: str, results: dict) -> list[str]:
    os.makedirs(OUT_DIR, exist_ok=True)
    names = list(results)
    forest = os.path.join(OUT_DIR, f"eight_schools_forest_{backend}.png")
    arviz_compat.plot_forest({n: results[n]["idata"] for n in names}, forest, var_names=["mu", "tau", "theta"],
                             ci_prob=0.9, title=f"eight schools ({backend}): 90% intervals")

    pair = os.path.join(OUT_DIR, f"eight_schools_pair_{backend}.png")
    fig, axs = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), sharex=True, sharey=True)
    for ax, n in zip(axs, names):
        f = _flat(results[n]["idata"])
        ax.scatter(f["theta[0]"], np.log(f["tau"]), s=2, alpha=0.3)
        ax.set_title(n)
        ax.set_xlabel("theta[0]")
    axs[0].set_ylabel("log tau")
    fig.suptitle(f"eight schools ({backend}): the funnel in (theta[0], log tau)")
    fig.tight_layout()
    fig.savefig(pair, dpi=110)
    plt.close(fig)
    return [forest, pair]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", nargs="+", choices=["pyro", "numpyro"], default=["pyro", "numpyro"])
    parser.add_argument("--steps", type=int, default=5000, help="SVI steps per guide")
    args = parser.parse_args()
    for backend in args.backend:
        results = (run_pyro if backend == "pyro" else run_numpyro)(args.steps)
        report(backend, results)
        for path in figures(backend, results):
            print(f"wrote {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
