"""The default AutoFlowGuide in the users' loop (one particle, ClippedAdam at a constant rate; issue 19), pinned:

- a badly scaled regression (predictor ~ 1000 ± 100, posterior sds 10⁻⁴ to 10⁻¹), where Adam at lr 1e-2 undid a
  correct Laplace start in 1 to 10 steps when the guide's final layers trained in the units of ``u``: trained in
  coordinates whitened by the Laplace approximation, 300 steps keep it at the exact posterior;
- the README model at lr 0.03 over several seeds, which once crashed with a NaN at step 6.
Known answer for the regression: with the noise sd known, the posterior of (a, b) is Gaussian,
``Σ = (X'X / σ² + I / 10²)⁻¹``, ``m = Σ X'y / σ²``.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

from pyroflows import run_svi
from pyroflows.infer import AutoFlowGuide

pytestmark = pytest.mark.usefixtures("fresh_param_store")
NOISE = 0.1


def _regression() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, generator=g, dtype=torch.float64) * 100 + 1000
    return x, 3 + 0.02 * x + torch.randn(100, generator=g, dtype=torch.float64) * NOISE


def regression(x, y):
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 10.0))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 10.0))
    with pyro.plate("n", len(x)):
        pyro.sample("y", dist.Normal(a + b * x, NOISE), obs=y)


def test_adam_at_lr_1e_2_keeps_the_laplace_start_of_a_badly_scaled_regression():
    x, y = _regression()
    design = torch.stack([torch.ones_like(x), x], -1)
    cov = torch.linalg.inv(design.T @ design / NOISE**2 + torch.eye(2, dtype=torch.float64) / 100)
    mean, sd = cov @ design.T @ y / NOISE**2, cov.diagonal().sqrt()
    guide = AutoFlowGuide(regression)
    svi = SVI(regression, guide, ClippedAdam({"lr": 1e-2, "clip_norm": 10.0}), Trace_ELBO())
    losses = run_svi(svi, x, y, num_steps=300, progress=False).losses
    assert len(losses) == 300 and bool(torch.isfinite(losses).all())
    assert float(losses[-100:].mean()) < float(losses[:10].mean()) + 1.0  # no drift away from the start
    with torch.no_grad():
        u = guide.get_posterior().sample((8000,))
    assert (((u.mean(0) - mean) / sd).abs() < 0.2).all()
    assert ((u.std(0) / sd).log().abs() < 0.2).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_readme_model_at_lr_0_03_trains_without_a_crash(seed):
    pyro.set_rng_seed(seed)
    y = 3.0 + 2.0 * torch.randn(50)

    def model(y):
        loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
        scale = pyro.sample("scale", dist.HalfNormal(5.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(loc, scale), obs=y)

    guide = AutoFlowGuide(model)
    losses = run_svi(SVI(model, guide, ClippedAdam({"lr": 0.03}), Trace_ELBO()), y, num_steps=300,
                     progress=False).losses
    assert len(losses) == 300 and bool(torch.isfinite(losses).all())
    med = guide.median()
    assert abs(float(med["loc"]) - float(y.mean())) < 3 * float(y.std()) / math.sqrt(50) + 0.1
