"""The default AutoFlowGuide in the users' loop (one particle, ClippedAdam at a constant rate; issue 19), pinned, as
in tests/test_pyroflows/infer/test_autoguide_stability.py: a badly scaled regression whose Laplace start Adam at lr
1e-2 used to undo within 10 steps stays at the exact posterior for 300 steps, and the README model at lr 0.03 trains
without a crash over several seeds. Known answer: with the noise sd known, ``Σ = (X'X / σ² + I / 10²)⁻¹``,
``m = Σ X'y / σ²``.
"""

from __future__ import annotations

import pytest

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX")
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO  # noqa: E402

from numpyroflows.infer import AutoFlowGuide  # noqa: E402

NOISE = 0.1


def regression(x, y):
    a = numpyro.sample("a", dist.Normal(0.0, 10.0))
    b = numpyro.sample("b", dist.Normal(0.0, 10.0))
    with numpyro.plate("n", len(x)):
        numpyro.sample("y", dist.Normal(a + b * x, NOISE), obs=y)


def test_adam_at_lr_1e_2_keeps_the_laplace_start_of_a_badly_scaled_regression():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = rng.normal(size=100) * 100 + 1000
        y = 3 + 0.02 * x + rng.normal(size=100) * NOISE
        design = np.stack([np.ones_like(x), x], -1)
        cov = np.linalg.inv(design.T @ design / NOISE**2 + np.eye(2) / 100)
        mean, sd = cov @ design.T @ y / NOISE**2, np.sqrt(np.diag(cov))
        guide = AutoFlowGuide(regression)
        svi = SVI(regression, guide, numpyro.optim.ClippedAdam(1e-2, clip_norm=10.0), Trace_ELBO())
        result = svi.run(jax.random.PRNGKey(0), 300, jnp.asarray(x), jnp.asarray(y), progress_bar=False)
        losses = np.asarray(result.losses)
        assert np.all(np.isfinite(losses)) and losses[-100:].mean() < losses[:10].mean() + 1.0
        u = np.asarray(guide.get_posterior(result.params).sample(jax.random.PRNGKey(1), (8000,)))
        assert np.all(np.abs(u.mean(0) - mean) / sd < 0.2)
        assert np.all(np.abs(np.log(u.std(0) / sd)) < 0.2)


def test_the_readme_model_at_lr_0_03_trains_without_a_crash():
    def model(y):
        loc = numpyro.sample("loc", dist.Normal(0.0, 10.0))
        scale = numpyro.sample("scale", dist.HalfNormal(5.0))
        with numpyro.plate("data", len(y)):
            numpyro.sample("y", dist.Normal(loc, scale), obs=y)

    for seed in range(2):
        y = jnp.asarray(3.0 + 2.0 * np.random.default_rng(seed).normal(size=50))
        guide = AutoFlowGuide(model)
        result = SVI(model, guide, numpyro.optim.ClippedAdam(0.03), Trace_ELBO()).run(
            jax.random.PRNGKey(seed), 300, y, progress_bar=False)
        assert np.all(np.isfinite(np.asarray(result.losses)))
        assert abs(float(guide.median(result.params)["loc"]) - float(y.mean())) < 3 * float(y.std()) / 50**0.5 + 0.1
