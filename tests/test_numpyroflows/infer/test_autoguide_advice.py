"""Every fix that ``numpyroflows.infer.AutoFlowGuide``'s errors and warnings advise, followed (the twin of
tests/test_pyroflows/infer/test_autoguide_advice.py): each test provokes the message, takes the advised code out of the
message itself, and runs it."""

from __future__ import annotations

import ast
import math
import re
import warnings

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX")
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO  # noqa: E402
from numpyro.infer.autoguide import AutoGuideList, AutoNormal  # noqa: E402
from numpyro.infer.initialization import init_to_value  # noqa: E402

from flowcommon import guide as common  # noqa: E402
from numpyroflows.infer import AutoFlowGuide  # noqa: E402

X_OBS = jnp.asarray(np.random.default_rng(0).normal(1.0, 0.5, size=40), jnp.float32)


def _run(model, guide, *args, elbo=None, steps: int = 3) -> np.ndarray:
    svi = SVI(model, guide, numpyro.optim.Adam(0.01), elbo or Trace_ELBO())
    return np.asarray(svi.run(jax.random.PRNGKey(0), steps, *args, progress_bar=False).losses)


def _init(model, guide, *args):
    return SVI(model, guide, numpyro.optim.Adam(0.01), Trace_ELBO()).init(jax.random.PRNGKey(0), *args)


def test_subsampled_local_advice_exposes_the_site_and_its_plate():
    """The advice once exposed only the site, and NumPyro's AutoNormal then failed with KeyError: 'data' (it looks up
    the site's plates in the blocked model)."""

    def model(x):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", x.shape[0], subsample_size=5) as idx:
            z = numpyro.sample("z_local", dist.Normal(mu, 1.0))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])

    with pytest.raises(ValueError) as excinfo:
        _init(model, AutoFlowGuide(model), X_OBS)
    local, rest = re.search(r"AutoGuideList with AutoNormal on (.+?) and AutoFlowGuide on (.+?), or",
                            str(excinfo.value)).groups()
    names = {"numpyro": numpyro, "model": model}
    guide = AutoGuideList(model)
    guide.append(AutoNormal(eval(local, names)))
    guide.append(AutoFlowGuide(eval(rest, names), hidden_dims=(8, 8)))
    losses = _run(model, guide, X_OBS)
    assert np.all(np.isfinite(losses))


def test_discrete_site_advice_enumerate_and_block_it_from_the_flow():
    pytest.importorskip("funsor", reason="NumPyro's TraceEnum_ELBO needs funsor")
    from numpyro.contrib.funsor import config_enumerate
    from numpyro.infer import TraceEnum_ELBO

    def model(x):
        k = numpyro.sample("k", dist.Bernoulli(0.3))
        mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(mu + 2.0 * k, 1.0), obs=x)

    with pytest.raises(ValueError) as excinfo:
        _init(model, AutoFlowGuide(model), X_OBS)
    block = re.search(r"build the flow guide on (.+?) \(inside", str(excinfo.value)).group(1)
    enumerated = config_enumerate(model)
    guide = AutoFlowGuide(eval(block, {"numpyro": numpyro, "model": enumerated}), hidden_dims=(8, 8))
    assert np.all(np.isfinite(_run(enumerated, guide, X_OBS, elbo=TraceEnum_ELBO(max_plate_nesting=1))))


def test_no_latent_advice_an_empty_guide():
    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0), obs=0.5)

    with pytest.raises(ValueError) as excinfo:
        _init(model, AutoFlowGuide(model))
    code = re.search(r"use an empty guide \((def .+)\)$", str(excinfo.value)).group(1)
    scope: dict = {}
    exec(code, scope)
    assert np.all(np.isfinite(_run(model, scope["guide"])))


def test_coupling_in_one_dimension_advice_the_autoregressive_flows():
    def model():
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=0.5)

    with pytest.raises(ValueError) as excinfo:
        _init(model, AutoFlowGuide(model, "realnvp"))
    names = re.findall(r"'(\w+)'", str(excinfo.value).split("use flow=")[1])
    assert names == ["iaf", "spline_iaf"]
    for name in names:
        assert np.all(np.isfinite(_run(model, AutoFlowGuide(model, name, hidden_dims=(8, 8), count_bins=4)
                                       if name == "spline_iaf" else AutoFlowGuide(model, name, hidden_dims=(8, 8)))))


def test_unknown_flow_argument_advice_the_accepted_ones():
    with pytest.raises(TypeError) as excinfo:
        AutoFlowGuide(lambda: None, "iaf", num_bins=8)
    accepted = ast.literal_eval(str(excinfo.value).split("it accepts ")[1])
    assert "count_bins" in accepted and "num_transforms" in accepted


def test_laplace_size_advice_map_or_a_larger_laplace_max_dim():
    def model():
        numpyro.sample("a", dist.Normal(jnp.zeros(3), 1.0).to_event(1))

    guide = AutoFlowGuide(model, hidden_dims=(8, 8))
    guide.laplace_max_dim = 2
    assert guide.warm_start().method == "map"  # "auto" above laplace_max_dim
    with pytest.raises(ValueError) as excinfo:
        guide.warm_start(method="laplace")
    message = str(excinfo.value)
    method = re.search(r"use method='(\w+)'", message).group(1)
    assert guide.warm_start(method=method).method == "map"
    setattr(guide, re.search(r"raise AutoFlowGuide\.(\w+)", message).group(1), 3)
    assert guide.warm_start(method="laplace").method == "laplace"


def test_first_call_advice_svi_init_or_a_seeded_call():
    guide = AutoFlowGuide(lambda: numpyro.sample("a", dist.Normal(0.0, 1.0)), hidden_dims=(8, 8))
    with pytest.raises(RuntimeError, match=r"run SVI.init \(or call the guide under numpyro.handlers.seed with the "
                                           r"model's arguments\)"):
        guide.get_base_dist()
    numpyro.handlers.seed(guide, 0)()
    assert guide.get_base_dist().event_shape == (1,)


def test_flat_prior_advice_proper_priors_or_no_warm_start():
    def flat():
        numpyro.sample("free", dist.ImproperUniform(dist.constraints.real, (), (2,)))

    start = init_to_value(values={"free": jnp.array([0.5, -0.5])})
    with pytest.raises(ValueError) as excinfo:
        AutoFlowGuide(flat, init_loc_fn=start).warm_start(method="map")
    message = str(excinfo.value)
    assert "warm_start=None" in message and "init_to_value" in message and "proper priors" in message
    for option in (None, "auto"):  # no warm start, or "auto", which says it keeps the default start
        guide = AutoFlowGuide(flat, init_loc_fn=start, init_scale=0.5, hidden_dims=(8, 8), warm_start=option)
        svi = SVI(flat, guide, numpyro.optim.Adam(0.01), Trace_ELBO())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            params = svi.get_params(svi.init(jax.random.PRNGKey(0)))
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert messages == ([] if option is None else [common.FLAT_DENSITY_FALLBACK])
        np.testing.assert_allclose(np.asarray(guide.median(params)["free"]), [0.5, -0.5], atol=0.1)

    def proper():
        numpyro.sample("free", dist.Normal(jnp.zeros(2), 1.0).to_event(1))

    assert AutoFlowGuide(proper).warm_start(method="map").converged


def test_funnel_advice_reparameterize():
    def centred():
        v = numpyro.sample("v", dist.Normal(0.0, 3.0))
        with numpyro.plate("i", 9):
            numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)))

    start = init_to_value(values={"v": 0.0, "x": jnp.zeros(9)})
    with pytest.warns(RuntimeWarning, match="reparameterize the model"):
        assert AutoFlowGuide(centred, init_loc_fn=start).warm_start().method == "none"

    def non_centred():
        v = numpyro.sample("v", dist.Normal(0.0, 3.0))
        with numpyro.plate("i", 9):
            x_raw = numpyro.sample("x_raw", dist.Normal(0.0, 1.0))
        numpyro.deterministic("x", x_raw * jnp.exp(v / 2))

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ws = AutoFlowGuide(non_centred).warm_start()
    assert ws.method == "laplace" and ws.converged and math.isfinite(ws.log_density)
