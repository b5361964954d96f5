"""Eight schools (non-centred) with AutoFlowGuide in Pyro and NumPyro, against Stan's NUTS reference.

Reference means and sds: posteriordb ``eight_schools-eight_schools_noncentered`` (Magnusson et al. 2024, BSD-3; 10
chains x 1000 NUTS draws), copied from ``benchmarks/data/posteriordb``. The default guide, changed for nothing but the
step budget, must match every mean within 0.15 reference sd and every sd within 15%, with PSIS k̂ < 0.7.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]
REFERENCE = {  # name: (mean, sd)
    "theta[1]": (6.1505, 5.61586), "theta[2]": (4.93958, 4.64558), "theta[3]": (3.90591, 5.28071),
    "theta[4]": (4.79602, 4.77094), "theta[5]": (3.61444, 4.61472), "theta[6]": (4.05115, 4.79625),
    "theta[7]": (6.31717, 5.00286), "theta[8]": (4.884, 5.31769), "mu": (4.41052, 3.3093), "tau": (3.60206, 3.19848),
}
DRAWS = 40_000  # Monte Carlo error of a mean: 0.005 sd; of an sd: <1%, a few % for the heavy-tailed tau
MEAN_TOL, SD_TOL, KHAT_MAX = 0.15, 0.15, 0.7


def _score(mu: np.ndarray, tau: np.ndarray, theta: np.ndarray) -> tuple[float, float]:
    draws = {"mu": mu.ravel(), "tau": tau.ravel(), **{f"theta[{j + 1}]": theta.reshape(-1, 8)[:, j] for j in range(8)}}
    mean_err = max(abs(draws[k].mean() - m) / s for k, (m, s) in REFERENCE.items())
    sd_err = max(abs(draws[k].std() / s - 1) for k, (m, s) in REFERENCE.items())
    return mean_err, sd_err


def test_pyro_eight_schools_matches_nuts():
    pyro = pytest.importorskip("pyro")
    torch = pytest.importorskip("torch")
    import pyro.distributions as dist
    from pyro.infer import SVI, Predictive, Trace_ELBO
    from pyro.optim import ClippedAdam

    from pyroflows import AutoFlowGuide, vi_diagnostics

    sigma, y = torch.tensor(SIGMA), torch.tensor(Y)

    def model(sigma, y=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("school", 8):
            eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
            theta = pyro.deterministic("theta", mu + tau * eta)
            pyro.sample("y", dist.Normal(theta, sigma), obs=y)

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    steps = 3000
    guide = AutoFlowGuide(model)
    optim = ClippedAdam({"lr": 1e-2, "lrd": 0.1 ** (1 / steps), "clip_norm": 10.0})
    svi = SVI(model, guide, optim, Trace_ELBO(num_particles=16, vectorize_particles=True))
    for _ in range(steps):
        svi.step(sigma, y)
    with torch.no_grad():
        s = Predictive(model, guide=guide, num_samples=DRAWS, parallel=True, return_sites=["mu", "tau", "theta"])(sigma)
    mean_err, sd_err = _score(*(s[k].numpy() for k in ("mu", "tau", "theta")))
    diag = vi_diagnostics(guide, model, sigma, y, num_samples=DRAWS)
    assert mean_err < MEAN_TOL, mean_err
    assert sd_err < SD_TOL, sd_err
    assert diag.khat < KHAT_MAX, diag


def test_numpyro_eight_schools_matches_nuts():
    jax = pytest.importorskip("jax")
    numpyro = pytest.importorskip("numpyro")
    import jax.numpy as jnp
    import numpyro.distributions as dist
    import optax
    from numpyro.infer import SVI, Predictive, Trace_ELBO

    from numpyroflows import AutoFlowGuide, vi_diagnostics

    sigma, y = jnp.asarray(SIGMA), jnp.asarray(Y)

    def model(sigma, y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
        with numpyro.plate("school", 8):
            eta = numpyro.sample("eta", dist.Normal(0.0, 1.0))
            theta = numpyro.deterministic("theta", mu + tau * eta)
            numpyro.sample("y", dist.Normal(theta, sigma), obs=y)

    steps = 3000
    guide = AutoFlowGuide(model)
    schedule = optax.exponential_decay(1e-2, steps, 0.1)
    optim = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(schedule))
    svi = SVI(model, guide, optim, Trace_ELBO(num_particles=16))
    result = svi.run(jax.random.key(0), steps, sigma, y, progress_bar=False)
    s = Predictive(model, guide=guide, params=result.params, num_samples=DRAWS,
                   return_sites=["mu", "tau", "theta"])(jax.random.key(1), sigma)
    mean_err, sd_err = _score(*(np.asarray(s[k]) for k in ("mu", "tau", "theta")))
    diag = vi_diagnostics(guide, model, sigma, y, params=result.params, rng_key=jax.random.key(2), num_samples=DRAWS)
    assert mean_err < MEAN_TOL, mean_err
    assert sd_err < SD_TOL, sd_err
    assert diag.khat < KHAT_MAX, diag
    assert math.isfinite(diag.elbo)
