"""AutoFlowGuide(stick_the_landing=True) in NumPyro: the path-gradient ELBO estimator (Roeder et al. 2017; Vaitl et
al. 2022), the mirror of tests/test_pyroflows/infer/test_path_gradient.py.

Known answer: on a Gaussian posterior the default guide starts exactly at it (the Laplace approximation is exact),
so ``log q(u) - log p(u)`` is a constant and the path gradient of a single-draw ELBO is zero for every draw, while
the ordinary estimator's score term is not. The loss values are the same either way.
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
from numpyroflows.infer.autoguide import PathFlowDistribution  # noqa: E402

DATA = np.array([[0.3, -1.2], [1.1, 0.4], [0.2, -0.3]])


def model(x):
    z = numpyro.sample("z", dist.Normal(jnp.zeros(2), 2.0).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


@pytest.mark.parametrize("flow", ["iaf", "realnvp"])
def test_the_path_gradient_vanishes_at_the_exact_posterior(flow):
    with jax.enable_x64(True):
        x = jnp.asarray(DATA)
        losses = {}
        for stl in (False, True):
            guide = AutoFlowGuide(model, flow, hidden_dims=(8, 8), stick_the_landing=stl)
            svi = SVI(model, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
            params = svi.get_params(svi.init(jax.random.PRNGKey(0), x))
            assert isinstance(guide._get_posterior(), PathFlowDistribution) == stl

            def loss(p):
                return Trace_ELBO().loss(jax.random.PRNGKey(2), p, model, guide, x)  # noqa: B023

            value, grads = jax.jit(jax.value_and_grad(loss))(params)
            largest = max(float(jnp.abs(g).max()) for g in grads.values())
            losses[stl] = float(value)
            if stl:
                assert largest < 1e-9, f"path gradient {largest:.3g} at the exact posterior"
            else:
                assert largest > 1e-3  # the score term's noise
        assert losses[True] == pytest.approx(losses[False], abs=1e-9)
