"""numpyroflows inside NumPyro: a flow guide trained with SVI + Trace_ELBO recovers an exact Gaussian posterior, and
plain jax.grad + optax fits a flow by maximum likelihood."""

from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO  # noqa: E402

import numpyroflows  # noqa: E402
from numpyroflows import flows  # noqa: E402

# The conjugate model of tests/test_pyroflows/infer/test_integration.py: z ~ N(mu0, Sigma0), x_i | z ~ N(z, Sigma), i =
# 1..n, whose posterior is Gaussian with precision Sigma0^-1 + n Sigma^-1 and mean Cov_post (Sigma0^-1 mu0 + Sigma^-1
# Σ_i x_i).
MU0 = np.array([1.0, -1.0])
SIGMA0 = np.array([[4.0, 1.0], [1.0, 3.0]])
SIGMA = np.array([[4.0, 2.4], [2.4, 2.25]])
N_OBS = 20


def _data() -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.array([0.5, 1.5]) + rng.normal(size=(N_OBS, 2)) @ np.linalg.cholesky(SIGMA).T


def _exact_posterior(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cov = np.linalg.inv(np.linalg.inv(SIGMA0) + data.shape[0] * np.linalg.inv(SIGMA))
    mean = cov @ (np.linalg.solve(SIGMA0, MU0) + np.linalg.solve(SIGMA, data.sum(0)))
    return mean, cov


def model(data):
    z = numpyro.sample("z", dist.MultivariateNormal(jnp.asarray(MU0), jnp.asarray(SIGMA0)))
    with numpyro.plate("data", data.shape[0]):
        numpyro.sample("x", dist.MultivariateNormal(z, jnp.asarray(SIGMA)), obs=data)


SVI_FLOWS = {
    "IAF": lambda key: flows.IAF(2, num_transforms=2, hidden_dims=(16, 16), key=key),
    "RealNVP": lambda key: flows.RealNVP(2, num_transforms=4, hidden_dims=(16, 16), key=key),
    "NSF": lambda key: flows.NSF(2, num_transforms=2, hidden_dims=(16, 16), count_bins=4, key=key),
}


@pytest.mark.parametrize("name", list(SVI_FLOWS))
def test_svi_recovers_the_exact_gaussian_posterior(name):
    data = jnp.asarray(_data())
    mean, cov = _exact_posterior(np.asarray(data))
    base = SVI_FLOWS[name](jax.random.PRNGKey(0))

    def guide(data):
        flow = numpyroflows.module("flow", base)
        numpyro.sample("z", flow())

    steps = 800
    optim = numpyro.optim.optax_to_numpyro(optax.adam(optax.exponential_decay(0.03, steps, 0.02)))
    svi = SVI(model, guide, optim, Trace_ELBO(num_particles=32))
    result = svi.run(jax.random.PRNGKey(1), steps, data, progress_bar=False)
    assert math.isfinite(float(result.losses[-1]))
    trained = base.with_params({k: result.params[f"flow${k}"] for k in base.params})

    n = 20_000
    z = np.asarray(trained().sample(jax.random.PRNGKey(2), (n,)))
    sd = np.sqrt(np.diag(cov))
    # Tolerances as in the Pyro test: 4 Monte Carlo standard errors of the sample mean / covariance plus 0.1 sd (or
    # 0.1 sd_i sd_j) for the noisy end point of SVI; the guide can represent the posterior exactly.
    tol_mean = 4 * sd / math.sqrt(n) + 0.1 * sd
    assert np.all(np.abs(z.mean(0) - mean) <= tol_mean), f"{name}: mean {z.mean(0)} vs exact {mean}"
    emp = np.cov(z.T)
    tol_cov = 4 * np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n) + 0.1 * np.outer(sd, sd)
    assert np.all(np.abs(emp - cov) <= tol_cov), f"{name}: covariance {emp} vs exact {cov}"


def test_maximum_likelihood_with_jax_grad_and_optax_matches_the_gaussian_mle():
    # an affine elementwise flow is a diagonal Gaussian: its MLE is the sample mean and (biased) sample sd
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2000, 2)) * np.array([2.0, 0.5]) + np.array([1.0, -3.0]))
    flow = flows.Elementwise(2, transformer="affine", key=jax.random.PRNGKey(0))
    opt = optax.adam(0.05)
    state = opt.init(flow)

    @jax.jit
    def step(flow, state):
        loss, grads = jax.value_and_grad(lambda f: -f().log_prob(x).mean())(flow)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(flow, updates), state, loss

    for _ in range(1500):
        flow, state, loss = step(flow, state)
    z, _ = flow.transform().inverse_and_log_det(x)
    np.testing.assert_allclose(np.asarray(z.mean(0)), 0.0, atol=2e-3)
    np.testing.assert_allclose(np.asarray(z.std(0)), 1.0, atol=2e-3)
    exact = -np.sum(np.log(np.asarray(x).std(0))) - np.log(2 * np.pi) - 1.0
    assert abs(float(-loss) - exact) < 1e-3
