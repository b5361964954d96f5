"""Every fix that ``pyroflows.infer.AutoFlowGuide``'s errors and warnings advise, followed: each test provokes the
message, takes the advised code out of the message itself (so that a message whose advice stops working fails here),
and runs it."""

from __future__ import annotations

import ast
import math
import re
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoGuideList, AutoNormal
from pyro.infer.autoguide.initialization import init_to_value
from pyro.optim import Adam
from torch.distributions import constraints

from flowcommon import guide as common
from pyroflows.infer import AutoFlowGuide

pytestmark = pytest.mark.usefixtures("fresh_param_store")


def _message(excinfo) -> str:
    return str(excinfo.value)


def _steps(model, guide, *args, elbo=None, n: int = 3) -> list[float]:
    svi = SVI(model, guide, Adam({"lr": 1e-2}), elbo or Trace_ELBO())
    return [svi.step(*args) for _ in range(n)]


def test_discrete_site_advice_enumerate_and_block_it_from_the_flow():
    def model(data):
        k = pyro.sample("k", dist.Bernoulli(0.3))
        mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        with pyro.plate("data", data.shape[0]):
            pyro.sample("x", dist.Normal(mu + 2.0 * k, 1.0), obs=data)

    data = torch.randn(10) + 1.0
    with pytest.raises(ValueError) as excinfo:
        AutoFlowGuide(model)(data)
    message = _message(excinfo)
    assert "config_enumerate" in message and "TraceEnum_ELBO" in message
    block = re.search(r"build the flow guide on (.+?) \(inside", message).group(1)
    enumerated = config_enumerate(model)
    guide = AutoFlowGuide(eval(block, {"poutine": poutine, "model": enumerated}), hidden_dims=(8, 8))
    losses = _steps(enumerated, guide, data, elbo=TraceEnum_ELBO(max_plate_nesting=1))
    assert all(math.isfinite(v) for v in losses)


def test_subsampled_local_advice_autoguidelist_with_autonormal_on_the_locals():
    data = torch.randn(30)

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfNormal(2.0))
        with pyro.plate("groups", 30, subsample_size=10) as idx:
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            pyro.sample("y", dist.Normal(theta, 1.0), obs=data[idx])

    with pytest.raises(ValueError) as excinfo:
        AutoFlowGuide(model)(data)
    local, rest = re.search(r"AutoGuideList with AutoNormal on (.+?) and AutoFlowGuide on (.+?), or",
                            _message(excinfo)).groups()
    names = {"poutine": poutine, "model": model}
    guide = AutoGuideList(model)
    guide.append(AutoNormal(eval(local, names)))
    guide.append(AutoFlowGuide(eval(rest, names), hidden_dims=(8, 8)))
    assert all(math.isfinite(v) for v in _steps(model, guide, data))
    assert guide[0].locs.theta.shape == (30,)


def test_no_latent_advice_an_empty_guide():
    def model(data):
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=data)

    with pytest.raises(ValueError) as excinfo:
        AutoFlowGuide(model)(torch.tensor(0.3))
    code = re.search(r"use an empty guide \((def .+)\)$", _message(excinfo)).group(1)
    scope: dict = {}
    exec(code, scope)
    assert all(math.isfinite(v) for v in _steps(model, scope["guide"], torch.tensor(0.3)))


def test_coupling_in_one_dimension_advice_the_autoregressive_flows():
    def model():
        pyro.sample("a", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError) as excinfo:
        AutoFlowGuide(model, "realnvp")()
    names = re.findall(r"'(\w+)'", _message(excinfo).split("use flow=")[1])
    assert names == ["iaf", "spline_iaf"]
    for name in names:
        pyro.clear_param_store()
        assert all(math.isfinite(v) for v in _steps(model, AutoFlowGuide(model, name, hidden_dims=(8, 8))))


def test_unknown_flow_argument_advice_the_accepted_ones():
    with pytest.raises(TypeError) as excinfo:
        AutoFlowGuide(lambda: None, "iaf", num_bins=8)
    accepted = ast.literal_eval(_message(excinfo).split("it accepts ")[1])
    assert "count_bins" in accepted and "num_transforms" in accepted

    def model():
        pyro.sample("a", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    guide = AutoFlowGuide(model, "spline_iaf", hidden_dims=(8, 8), count_bins=4)
    assert all(math.isfinite(v) for v in _steps(model, guide))


def test_laplace_size_advice_map_or_a_larger_laplace_max_dim():
    def model():
        pyro.sample("a", dist.Normal(torch.zeros(3), 1.0).to_event(1))

    guide = AutoFlowGuide(model, hidden_dims=(8, 8))
    guide.laplace_max_dim = 2
    assert guide.warm_start().method == "map"  # "auto" above laplace_max_dim
    with pytest.raises(ValueError) as excinfo:
        guide.warm_start(method="laplace")
    message = _message(excinfo)
    method = re.search(r"use method='(\w+)'", message).group(1)
    assert guide.warm_start(method=method).method == "map"
    attribute = re.search(r"raise AutoFlowGuide\.(\w+)", message).group(1)
    setattr(guide, attribute, 3)
    assert guide.warm_start(method="laplace").method == "laplace"


def test_first_call_advice_call_the_guide():
    def model(data):
        pyro.sample("a", dist.Normal(data, 1.0))

    guide = AutoFlowGuide(model, hidden_dims=(8, 8))
    with pytest.raises(RuntimeError, match=r"call guide\(\*args\) \(or run one SVI step\)"):
        guide.get_posterior()
    guide(torch.tensor(0.5))
    assert guide.get_posterior().event_shape == (1,)


def test_flat_prior_advice_proper_priors_or_no_warm_start():
    def flat():
        pyro.sample("free", dist.ImproperUniform(constraints.real, (), (2,)))

    start = init_to_value(values={"free": torch.tensor([0.5, -0.5])})
    with pytest.raises(ValueError) as excinfo:
        AutoFlowGuide(flat, init_loc_fn=start).warm_start(method="map")
    message = _message(excinfo)
    assert "warm_start=None" in message and "init_to_value" in message and "proper priors" in message
    for option in (None, "auto"):  # no warm start, or "auto", which says it keeps the default start
        guide = AutoFlowGuide(flat, init_loc_fn=start, init_scale=0.5, hidden_dims=(8, 8), warm_start=option)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            guide()
        assert [str(w.message) for w in caught] == ([] if option is None else [common.FLAT_DENSITY_FALLBACK])
        torch.testing.assert_close(guide.median()["free"], torch.tensor([0.5, -0.5]), atol=0.1, rtol=0)

    def proper():
        pyro.sample("free", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    assert AutoFlowGuide(proper).warm_start(method="map").converged


def test_funnel_advice_reparameterize():
    """The warm start on a centred funnel keeps its default start and advises a reparameterization; on the
    non-centred funnel the Laplace start is clean and kept, without a warning."""

    def centred():
        v = pyro.sample("v", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 3.0))
        with pyro.plate("i", 9):
            pyro.sample("x", dist.Normal(torch.tensor(0.0, dtype=torch.float64), torch.exp(v / 2)))

    zero = torch.tensor(0.0, dtype=torch.float64)
    start = init_to_value(values={"v": zero, "x": torch.zeros(9, dtype=torch.float64)})
    with pytest.warns(RuntimeWarning, match="reparameterize the model"):
        assert AutoFlowGuide(centred, init_loc_fn=start).warm_start().method == "none"

    def non_centred():
        v = pyro.sample("v", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 3.0))
        with pyro.plate("i", 9):
            x_raw = pyro.sample("x_raw", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        pyro.deterministic("x", x_raw * torch.exp(v / 2))

    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ws = AutoFlowGuide(non_centred).warm_start()
    assert ws.method == "laplace" and ws.converged
