"""AutoFlowGuide(stick_the_landing=True): the path-gradient ELBO estimator (Roeder et al. 2017; Vaitl et al. 2022).

Known answer: on a Gaussian posterior the default guide starts exactly at it (the Laplace approximation is exact),
so ``log q(u) - log p(u)`` is a constant and the path gradient of a single-draw ELBO is zero for every draw, while
the ordinary estimator's score term is not. The loss values are the same either way.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

from pyroflows.infer import AutoFlowGuide
from pyroflows.infer.autoguide import PathFlowDistribution

pytestmark = pytest.mark.usefixtures("fresh_param_store")
DATA = torch.tensor([[0.3, -1.2], [1.1, 0.4], [0.2, -0.3]], dtype=torch.float64)


def model(x):
    z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=torch.float64), 2.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def _loss_and_grads(guide):
    guide(DATA)
    params = [p for p in guide.flow.parameters()]
    loss = Trace_ELBO().differentiable_loss(model, guide, DATA)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(loss), max(float(g.abs().max()) for g in grads if g is not None)


@pytest.mark.parametrize("flow", ["iaf", "realnvp"])
def test_the_path_gradient_vanishes_at_the_exact_posterior(flow):
    losses = {}
    for stl in (False, True):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        guide = AutoFlowGuide(model, flow, hidden_dims=(8, 8), stick_the_landing=stl)
        guide(DATA)
        assert isinstance(guide.get_posterior(), PathFlowDistribution) == stl
        pyro.set_rng_seed(2)
        losses[stl], largest = _loss_and_grads(guide)
        if stl:
            assert largest < 1e-9, f"path gradient {largest:.3g} at the exact posterior"
        else:
            assert largest > 1e-3  # the score term's noise
    assert losses[True] == pytest.approx(losses[False], abs=1e-10)  # the same draw, the same value


def test_svi_with_the_path_gradient_stays_at_the_exact_posterior():
    """50 steps of one-draw SVI from the exact start: with the path gradient (zero but for round-off, which Adam's
    normalisation still turns into steps of up to lr) the guide stays within 0.1 posterior sds of the exact mean."""
    guide = AutoFlowGuide(model, hidden_dims=(8, 8), stick_the_landing=True)
    svi = SVI(model, guide, ClippedAdam({"lr": 5e-3}), Trace_ELBO())
    assert all(math.isfinite(svi.step(DATA)) for _ in range(50))
    var = 1.0 / (1.0 / 4.0 + DATA.shape[0])
    mean = var * DATA.sum(0)
    with torch.no_grad():
        u = guide.get_posterior().sample((20_000,))
    assert ((u.mean(0) - mean).abs() < 0.1 * var**0.5).all()
