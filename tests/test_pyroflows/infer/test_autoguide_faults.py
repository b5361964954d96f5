"""Faults users hit with ``pyroflows.infer.AutoFlowGuide`` (issue 18), each fixed and kept fixed:

- an interrupt (KeyboardInterrupt) during the first build leaves the guide rebuildable, not half-built;
- a wide prior (``N(0, 1e6)``) puts ``init_to_median`` far out, where a float32 search stalled and called itself
  converged: the search runs in float64 and ``converged`` means stationary;
- a param store saved and loaded (Pyro's checkpoint pattern) resumes a new guide, which trains on;
- the default guide at 2000 latents has linear, not quadratic, size and one SVI step costs seconds;
- a warm start on a flat improper prior says why it cannot work and what to do.
"""

from __future__ import annotations

import math
import resource
import time

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide.guides import AutoGuide
from pyro.optim import Adam
from torch.distributions import constraints

from pyroflows.infer import AutoFlowGuide

pytestmark = pytest.mark.usefixtures("fresh_param_store")


def small_model(data: torch.Tensor) -> None:
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 3.0).to_event(1))
    scale = pyro.sample("scale", dist.HalfNormal(torch.tensor(2.0)))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("x", dist.Normal(loc, scale.unsqueeze(-1)).to_event(1), obs=data)


def _small_data() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(20, 2, generator=g) * 1.5 + torch.tensor([1.0, -2.0])


# ------------------------------------------------------------------------------------------------- 6: interrupts
def _interrupt_once(monkeypatch, owner, name: str, after: bool = False) -> None:
    """The first call of ``owner.name`` raises KeyboardInterrupt (``after``: once the original has run)."""
    original = getattr(owner, name)
    calls = []

    def interrupted(*args, **kwargs):
        out = original(*args, **kwargs) if after else None
        if not calls:
            calls.append(1)
            raise KeyboardInterrupt
        return out if after else original(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)


@pytest.mark.parametrize("step", ["prototype", "flow", "warm_start", "explicit_warm_start"])
def test_an_interrupted_first_build_is_rebuilt_by_the_next_call(monkeypatch, step):
    """The interrupt lands in Pyro's prototype set-up (after it stored the trace), in the flow's construction, or in
    the L-BFGS search of a warm start; the next SVI step builds the guide afresh and trains it."""
    data = _small_data()
    guide = AutoFlowGuide(small_model, hidden_dims=(8, 8), warm_start="map" if step == "warm_start" else None)
    if step == "prototype":
        _interrupt_once(monkeypatch, AutoGuide, "_setup_prototype", after=True)
    elif step == "flow":
        _interrupt_once(monkeypatch, AutoFlowGuide, "_build_flow")
    else:
        _interrupt_once(monkeypatch, torch.optim.LBFGS, "step")
    svi = SVI(small_model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    with pytest.raises(KeyboardInterrupt):
        guide.warm_start(data, method="map") if step == "explicit_warm_start" else svi.step(data)
    losses = [svi.step(data) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    assert guide.flow is not None and guide.median(data)["scale"] > 0


# ------------------------------------------------------------------------------------------------- 7: wide priors
def wide_model(x: torch.Tensor) -> None:
    loc = pyro.sample("loc", dist.Normal(0.0, 1e6))
    scale = pyro.sample("scale", dist.HalfNormal(10.0))
    with pyro.plate("n", x.shape[0]):
        pyro.sample("x", dist.Normal(loc, scale), obs=x)


def _wide_data() -> torch.Tensor:
    return 1.0 + torch.randn(50, generator=torch.Generator().manual_seed(0))


def _wide_mode(x: torch.Tensor) -> tuple[float, float]:
    """The mode in u = (loc, s = log scale): loc = mean(x) (the prior's pull is 1e-12 relative), and with
    t = exp(2 s), S = Σ (x - mean)², n data: d/ds = -n + S/t - t/100 + 1 = 0, so t²/100 + (n - 1) t - S = 0."""
    x = x.double()
    n, ss = x.shape[0], float(((x - x.mean()) ** 2).sum())
    t = (-(n - 1) + math.sqrt((n - 1) ** 2 + 4 * ss / 100)) / (2 / 100)
    return float(x.mean()), 0.5 * math.log(t)


def test_wide_prior_warm_start_finds_the_mode_in_float64():
    """init_to_median starts loc about 4e5 from the data (prior sd 1e6); the float32 search stalled there and called
    itself converged. In float64 it reaches the mode, and the Laplace scale of loc is sd(x)/sqrt(n)."""
    x = _wide_data()
    loc_mode, s_mode = _wide_mode(x)
    guide = AutoFlowGuide(wide_model)
    ws = guide.warm_start(x, method="laplace")
    assert abs(float(guide._init_loc()[0])) > 1e5  # the start is far out
    assert ws.converged and ws.method == "laplace"
    assert abs(float(ws.loc[0]) - loc_mode) < 1e-5 and abs(float(ws.loc[1]) - s_mode) < 1e-5
    sd_loc = float(ws.scale_tril[0, 0])
    assert abs(sd_loc / (math.exp(s_mode) / math.sqrt(x.shape[0])) - 1) < 1e-3
    assert ws.loc.dtype == torch.float32 and guide.flow.transforms[-2].head.shift.dtype == torch.float32


def test_a_float32_search_that_stalls_far_from_the_mode_is_not_converged():
    """The old search's outcome, reproduced by searching in float32: it stops (no further decrease at float32
    precision) with a gradient that is not small relative to the point and the value, so ``converged`` is False."""
    from pyroflows.infer.warm_start import find_mode, neg_log_density

    x = _wide_data()
    guide = AutoFlowGuide(wide_model)
    guide(x)
    fn = neg_log_density(wide_model, guide._unpack_latent, (x,), {})
    mode = find_mode(fn, guide._init_loc().detach().float(), "map", 1000, 0.1)
    assert not mode.converged and "not a mode" in mode.message
    assert abs(float(mode.loc[0])) > 1e5


def test_a_model_that_cannot_run_in_float64_is_searched_in_its_own_dtype():
    """A float32 network applied to a latent rejects float64 values: the search then runs in float32, and says so."""
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)

    def model():
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("y", dist.Normal(net(z).squeeze(-1), 1.0), obs=torch.tensor(0.5))

    ws = AutoFlowGuide(model).warm_start(method="laplace")
    assert ws.method == "laplace" and ws.converged and "searched in torch.float32" in ws.message
    w, b = net.weight.detach().double()[0], float(net.bias)
    precision = torch.eye(2, dtype=torch.float64) + torch.outer(w, w)  # the exact Gaussian posterior
    mean = torch.linalg.solve(precision, w * (0.5 - b))
    torch.testing.assert_close(ws.loc.double(), mean, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------- 11: checkpoints
def _loss(guide, data) -> float:
    """A 2000-particle -ELBO under a fixed seed: the same parameters give the same value."""
    pyro.set_rng_seed(1)
    return Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1).loss(small_model, guide, data)


@pytest.mark.parametrize("warm_start", [None, "auto"])
def test_a_loaded_param_store_resumes_a_new_guide(tmp_path, warm_start):
    """Pyro's checkpoint pattern: train, ``pyro.get_param_store().save(path)``; in a new session ``load(path)`` and a
    new guide. The new guide's parameters are the loaded ones (its -ELBO is the trained guide's, far below a fresh
    guide's without a warm start), and SVI trains them. With ``"auto"`` the new guide's warm start recomputes the
    fixed layer (deterministic), so the loaded values mean what they meant."""
    data = _small_data()
    guide = AutoFlowGuide(small_model, hidden_dims=(8, 8), warm_start=warm_start)
    svi = SVI(small_model, guide, Adam({"lr": 0.02}), Trace_ELBO())
    for _ in range(300):
        svi.step(data)
    trained = _loss(guide, data)
    pyro.get_param_store().save(tmp_path / "store.pt")

    if warm_start is None:
        pyro.clear_param_store()
        fresh = _loss(AutoFlowGuide(small_model, hidden_dims=(8, 8), warm_start=None), data)
        assert fresh > trained + 20

    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "store.pt")
    resumed = AutoFlowGuide(small_model, hidden_dims=(8, 8), warm_start=warm_start)
    resumed(data)
    store = pyro.get_param_store()
    params = dict(resumed.flow.named_parameters())
    assert params and all(store._params[f"AutoFlowGuide.flow$$${name}"] is p for name, p in params.items())
    assert _loss(resumed, data) == pytest.approx(trained, abs=1e-3)
    before = {k: v.detach().clone() for k, v in params.items()}
    svi = SVI(small_model, resumed, Adam({"lr": 0.02}), Trace_ELBO())
    for _ in range(5):
        svi.step(data)
    assert all(not torch.equal(before[k], v.detach()) for k, v in resumed.flow.named_parameters())


def test_a_param_store_of_another_layout_is_refused_with_the_fix(tmp_path):
    data = _small_data()
    AutoFlowGuide(small_model, hidden_dims=(8, 8))(data)
    guide = AutoFlowGuide(small_model, hidden_dims=(16, 16))
    with pytest.raises(ValueError, match=r"holds 'AutoFlowGuide.flow\$\$\$transforms.0.made.flat' of shape .* other "
                                         r"settings .*pyro.clear_param_store\(\)"):
        guide(data)
    pyro.clear_param_store()  # the advice
    assert math.isfinite(SVI(small_model, guide, Adam({"lr": 0.01}), Trace_ELBO()).step(data))


# ------------------------------------------------------------------------------------------------- 8: large D
D_LARGE = 2000


def large_model(y: torch.Tensor) -> None:
    z = pyro.sample("z", dist.Normal(torch.zeros(D_LARGE), 1.0).to_event(1))
    pyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=y)


def test_default_guide_at_2000_latents_has_linear_size_and_steps_in_seconds():
    """Three MADEs of two hidden layers of 256 units and the final affine map: 3 (D·256 + 256 + 256² + 256 +
    256·2D + 2D) + 2D parameters (4.8M; 4 D units per layer gave 336M). One SVI step, the guide's build included,
    stays within seconds and a bounded amount of memory."""
    y = torch.randn(D_LARGE, generator=torch.Generator().manual_seed(0))
    guide = AutoFlowGuide(large_model)
    svi = SVI(large_model, guide, Adam({"lr": 1e-3}), Trace_ELBO())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    assert math.isfinite(svi.step(y))
    elapsed = time.perf_counter() - start
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    h, d = 256, D_LARGE
    assert guide.flow.transforms[0].config()["kwargs"]["hidden_dims"] == [h, h]
    assert sum(p.numel() for p in guide.parameters()) == 3 * (d * h + h + h * h + h + h * 2 * d + 2 * d) + 2 * d
    assert elapsed < 60, f"one step took {elapsed:.1f} s"
    assert grown_mib < 1500, f"peak memory grew by {grown_mib:.0f} MiB"


# ------------------------------------------------------------------------------------------------- 10: flat prior
def flat_model() -> None:
    pyro.sample("free", dist.ImproperUniform(constraints.real, (), (2,)))


def test_a_warm_start_on_a_flat_improper_prior_says_why_and_what_to_do():
    guide = AutoFlowGuide(flat_model, init_loc_fn=pyro.infer.autoguide.init_to_value(values={"free": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"does not depend on the latent values.*no mode.*proper priors.*"
                                         r"warm_start=None.*init_to_value"):
        guide.warm_start(method="laplace")
    with pytest.raises(ValueError, match=r"does not depend on the latent values"):
        AutoFlowGuide(flat_model, warm_start="map",
                      init_loc_fn=pyro.infer.autoguide.init_to_value(values={"free": torch.zeros(2)}))()
