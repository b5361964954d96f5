"""pyroflows inside Pyro: SVI recovers an exact posterior, the Pyro APIs a flow meets (plates, ``pyro.module``,
``Predictive``, ``JitTrace_ELBO``, ``TransformedDistribution``, ``ConditionalTransformedDistribution``,
``TransformModule``) work, and repeated backward passes need no cache clearing."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from catalogue import perturb
from pyro.infer import SVI, JitTrace_ELBO, Predictive, Trace_ELBO
from pyro.optim import Adam, ClippedAdam

from pyroflows import flows
from pyroflows import transforms as T

pytestmark = pytest.mark.usefixtures("fresh_param_store")


def _std_normal(d: int, dtype=torch.float32) -> dist.Distribution:
    return dist.Normal(torch.zeros(d, dtype=dtype), torch.ones(d, dtype=dtype)).to_event(1)


# ------------------------------------------------------------------------------------------------- SVI recovery
# A conjugate model: z ~ N(mu0, Sigma0), x_i | z ~ N(z, Sigma) for i = 1..n. The posterior is Gaussian with
# precision Sigma0^-1 + n Sigma^-1 and mean Cov_post (Sigma0^-1 mu0 + Sigma^-1 Σ_i x_i).
MU0 = torch.tensor([1.0, -1.0])
SIGMA0 = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
SIGMA = torch.tensor([[4.0, 2.4], [2.4, 2.25]])  # correlation 0.8: the posterior is correlated too
N_OBS = 20


def _conjugate_data() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    z_true = torch.tensor([0.5, 1.5])
    return z_true + torch.randn(N_OBS, 2, generator=g) @ torch.linalg.cholesky(SIGMA).T


def _exact_posterior(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d, m0, s0, s = data.double(), MU0.double(), SIGMA0.double(), SIGMA.double()
    cov = torch.linalg.inv(torch.linalg.inv(s0) + d.shape[0] * torch.linalg.inv(s))
    mean = cov @ (torch.linalg.solve(s0, m0) + torch.linalg.solve(s, d.sum(0)))
    return mean, cov


def conjugate_model(data: torch.Tensor) -> None:
    z = pyro.sample("z", dist.MultivariateNormal(MU0, SIGMA0))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("x", dist.MultivariateNormal(z, SIGMA), obs=data)


SVI_FLOWS = {
    "IAF": lambda: flows.IAF(2, num_transforms=2, hidden_dims=(16, 16)),
    "RealNVP": lambda: flows.RealNVP(2, num_transforms=4, hidden_dims=(16, 16)),
    "NSF": lambda: flows.NSF(2, num_transforms=2, hidden_dims=(16, 16), count_bins=4),
}


@pytest.mark.parametrize("name", list(SVI_FLOWS))
def test_svi_recovers_the_exact_gaussian_posterior(name):
    data = _conjugate_data()
    mean, cov = _exact_posterior(data)
    pyro.set_rng_seed(0)
    flow = SVI_FLOWS[name]()

    def guide(data):
        pyro.module("flow", flow)
        pyro.sample("z", flow())

    steps = 800
    optim = ClippedAdam({"lr": 0.03, "lrd": 0.02 ** (1 / steps)})  # the learning rate decays 50x over the run
    elbo = Trace_ELBO(num_particles=32, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(conjugate_model, guide, optim, elbo)
    for _ in range(steps):
        loss = svi.step(data)
    assert math.isfinite(loss)

    n = 20_000
    with torch.no_grad():
        z = flow().sample((n,)).double()
    assert z.shape == (n, 2)
    sd = cov.diag().sqrt()
    # Tolerances. Monte Carlo: the sample mean has standard error sd/√n, and a sample covariance entry
    # sqrt((C_ii C_jj + C_ij²)/n) (Gaussian fourth moments); we allow 4 standard errors. Optimisation: the guide
    # can represent the posterior exactly (an affine map of a Gaussian), so the ELBO optimum is the posterior, but
    # SVI ends at a noisy iterate near it (the ELBO gradient is estimated from 32 particles, the learning rate only
    # decays to 6e-4). Over seeds 0, 5 and 7 and all three flows, sampling and optimisation together missed by at
    # most 0.055 sd on the mean and 0.045 (relative to sd_i sd_j) on the covariance, so we allow 0.1 of each. A
    # log-determinant off by 50% misses the covariance by ~4x this tolerance, one off by 10% by ~1x.
    err_mean = (z.mean(0) - mean).abs()
    tol_mean = 4 * sd / math.sqrt(n) + 0.1 * sd
    assert (err_mean <= tol_mean).all(), f"{name}: mean {z.mean(0).tolist()} vs exact {mean.tolist()}"
    emp = torch.cov(z.T)
    scale = sd[:, None] * sd[None, :]
    tol_cov = 4 * torch.sqrt((cov.diag()[:, None] * cov.diag()[None, :] + cov**2) / n) + 0.1 * scale
    assert ((emp - cov).abs() <= tol_cov).all(), f"{name}: covariance {emp.tolist()} vs exact {cov.tolist()}"


# ------------------------------------------------------------------------------------------------- repeated backward
def _two_backward_passes(make_loss) -> None:
    for _ in range(2):  # a cached intermediate from the first pass would raise "backward through the graph twice"
        loss = make_loss()
        assert torch.isfinite(loss)
        loss.backward()


def test_two_backward_passes_with_fresh_forwards_need_no_cache_clearing():
    flow = perturb(flows.IAF(3, num_transforms=2, hidden_dims=(8, 8)), 0.1)
    data = torch.randn(6, 3)

    def rsample_loss():
        x, lp = flow().rsample_and_log_prob((5,))
        return x.square().sum() + lp.sum()

    _two_backward_passes(rsample_loss)
    _two_backward_passes(lambda: flow().log_prob(data).sum())
    _two_backward_passes(lambda: flow().rsample((4,)).sum() + flow().log_prob(flow().rsample((4,))).sum())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in flow.parameters())


# FlowDistribution.log_prob(x) of the distribution's own latest rsample() returns the density saved by the sampling
# pass, only while nothing it depends on changed. These check that it always equals a fresh log_prob.
def _iaf() -> flows.Flow:
    return perturb(flows.IAF(2, num_transforms=2, hidden_dims=(8, 8)), 0.1)


def test_log_prob_of_own_sample_after_a_backward_through_the_sample_behaves_like_a_fresh_one():
    # after a backward through x, x's own graph is freed: any log_prob(x), reused or fresh, then fails the same way
    # when backpropagated (autograd semantics, not a cache); scoring x.detach() works in both cases
    for fresh in (False, True):
        flow = _iaf()
        d = flow()
        x = d.rsample((5,))
        x.square().sum().backward()
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            (flow() if fresh else d).log_prob(x).sum().backward()
        d.log_prob(x.detach()).sum().backward()


def test_log_prob_of_own_sample_after_a_parameter_update():
    flow = _iaf()
    d = flow()
    x = d.rsample((5,))
    opt = torch.optim.SGD(flow.parameters(), lr=0.1)
    (-flow().log_prob(torch.randn(8, 2)).mean()).backward()
    opt.step()
    torch.testing.assert_close(d.log_prob(x), flow().log_prob(x))


def test_log_prob_of_own_sample_from_sample_is_differentiable():
    flow = _iaf()
    d = flow()
    x = d.sample((5,))
    lp = d.log_prob(x)
    assert lp.requires_grad
    lp.sum().backward()
    assert all(p.grad is not None for p in flow.parameters())


@pytest.mark.parametrize("which", ["flow.transform()", "flow.transforms[0]"])
def test_in_pyro_transformed_distribution(which):
    flow = perturb(flows.NSF(3, num_transforms=2, hidden_dims=(8, 8), count_bins=4), 0.1)
    t = flow.transform() if which == "flow.transform()" else flow.transforms[0]
    d = dist.TransformedDistribution(_std_normal(3), [t])

    def loss():
        x = d.rsample((5,))
        return x.square().sum() + d.log_prob(x).sum()

    _two_backward_passes(loss)
    fresh = torch.randn(7, 3) * 2  # data never produced by the transform: log_prob needs the exact inverse
    lp = d.log_prob(fresh)
    assert lp.shape == (7,) and torch.isfinite(lp).all()
    if which == "flow.transform()":  # pyro's TransformedDistribution and FlowDistribution agree
        torch.testing.assert_close(lp, flow().log_prob(fresh), atol=1e-5, rtol=1e-5)


def test_in_pyro_conditional_transformed_distribution():
    flow = perturb(flows.MAF(3, context_dim=2, num_transforms=2, hidden_dims=(8, 8), transformer="spline",
                             count_bins=4), 0.1)
    ctx = torch.randn(2)
    for parts in ([flow.transforms[0]], list(flow.transforms)):
        d = dist.ConditionalTransformedDistribution(_std_normal(3), parts).condition(ctx)

        def loss(d=d):
            x = d.rsample((5,))
            return x.square().sum() + d.log_prob(x).sum()

        _two_backward_passes(loss)
    # the whole stack conditioned through pyro equals the flow's own distribution on fresh data
    fresh = torch.randn(7, 3)
    torch.testing.assert_close(d.log_prob(fresh), flow(ctx).log_prob(fresh), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------- plates and params
def test_observed_flow_in_a_plate_scores_every_datum():
    flow = perturb(flows.MAF(2, num_transforms=2, hidden_dims=(8, 8)), 0.2)
    data = torch.randn(9, 2)

    def model(data):
        with pyro.plate("data", data.shape[0]):
            pyro.sample("x", flow(), obs=data)

    tr = pyro.poutine.trace(model).get_trace(data)
    tr.compute_log_prob()
    expected = flow().log_prob(data)
    torch.testing.assert_close(tr.nodes["x"]["log_prob"], expected)
    torch.testing.assert_close(tr.log_prob_sum(), expected.sum())


def test_conditional_flow_in_a_plate_uses_each_datums_context():
    flow = perturb(flows.NSF(2, context_dim=3, num_transforms=2, hidden_dims=(8, 8), count_bins=4), 0.2)
    n = 10
    data, ctx = torch.randn(n, 2), torch.randn(n, 3)

    def model(data, ctx):
        with pyro.plate("data", n):
            pyro.sample("x", flow(ctx), obs=data)

    tr = pyro.poutine.trace(model).get_trace(data, ctx)
    tr.compute_log_prob()
    per_datum = torch.stack([flow(ctx[i]).log_prob(data[i]) for i in range(n)])
    torch.testing.assert_close(tr.nodes["x"]["log_prob"], per_datum, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tr.log_prob_sum(), per_datum.sum(), atol=1e-4, rtol=1e-5)

    # subsampling: the plate scales the log-density of the subsample by n / size
    def sub_model(data, ctx):
        with pyro.plate("data", n, subsample_size=4) as idx:
            pyro.sample("x", flow(ctx[idx]), obs=data[idx])

    tr = pyro.poutine.trace(sub_model).get_trace(data, ctx)
    idx = tr.nodes["data"]["value"]
    torch.testing.assert_close(tr.log_prob_sum(), n / 4 * per_datum[idx].sum(), atol=1e-4, rtol=1e-5)


def test_amortised_guide_with_a_conditional_flow_trains():
    # local latents z_i ~ N(0, I), x_i ~ N(z_i, 0.5² I); the guide q(z_i | x_i) is a flow conditioned on x_i
    flow = flows.IAF(2, context_dim=2, num_transforms=2, hidden_dims=(8, 8))
    data = torch.randn(12, 2) * 1.5

    def model(data):
        with pyro.plate("data", data.shape[0]):
            z = pyro.sample("z", _std_normal(2))
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=data)

    def guide(data):
        pyro.module("flow", flow)
        with pyro.plate("data", data.shape[0]):
            pyro.sample("z", flow(data))

    svi = SVI(model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(data) for _ in range(30)]
    assert all(math.isfinite(v) for v in losses)


def test_pyro_module_registers_every_parameter_and_svi_updates_them():
    flow = flows.IAF(2, num_transforms=2, hidden_dims=(8, 8))
    data = _conjugate_data()

    def guide(data):
        pyro.module("flow", flow)
        pyro.sample("z", flow())

    guide(data)
    store = pyro.get_param_store()
    names = {f"flow$$${n}" for n, _ in flow.named_parameters()}
    assert set(store.keys()) == names
    before = {n: p.detach().clone() for n, p in flow.named_parameters()}
    svi = SVI(conjugate_model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(5):
        svi.step(data)
    for n, p in flow.named_parameters():
        assert not torch.equal(p.detach(), before[n]), f"SVI left {n} unchanged"
        torch.testing.assert_close(store[f"flow$$${n}"].detach(), p.detach(), atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------- Predictive
def test_predictive_with_a_flow_guide():
    flow = perturb(flows.IAF(2, num_transforms=2, hidden_dims=(8, 8)), 0.1)
    data = _conjugate_data()

    def flow_guide(data):
        pyro.module("flow", flow)
        pyro.sample("z", flow())

    def mvn_guide(data):  # reference: a plain pyro distribution at the same site
        pyro.sample("z", dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))

    num = 64
    out = Predictive(conjugate_model, guide=flow_guide, num_samples=num, return_sites=["z", "x"])(data)
    ref = Predictive(conjugate_model, guide=mvn_guide, num_samples=num, return_sites=["z", "x"])(data)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in ref.items()}
    assert out["z"].shape[0] == num and out["z"].shape[-1] == 2 and out["x"].shape == (num, N_OBS, 2)
    z = out["z"].reshape(num, 2)
    assert torch.isfinite(z).all() and torch.unique(z, dim=0).shape[0] == num

    # vectorised (parallel=True) over a model without a data plate
    def plateless_model(data):
        z = pyro.sample("z", dist.MultivariateNormal(MU0, SIGMA0))
        pyro.sample("x", dist.MultivariateNormal(z.unsqueeze(-2), SIGMA).to_event(1), obs=data)

    out = Predictive(plateless_model, guide=flow_guide, num_samples=num, parallel=True,
                     return_sites=["z", "x"])(data)
    assert out["z"].shape == (num, 2) and out["x"].shape == (num, N_OBS, 2)
    assert torch.isfinite(out["z"]).all()


# ------------------------------------------------------------------------------------------------- JIT
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:.*torch.jit.trace.*is deprecated")
@pytest.mark.parametrize("name", ["IAF", "NSF"])
def test_jit_trace_elbo_with_a_flow_guide(name):
    flow = SVI_FLOWS[name]()
    data = _conjugate_data()

    def guide(data):
        pyro.module("flow", flow)
        pyro.sample("z", flow())

    def loss_and_grads(elbo, seed):
        for p in flow.parameters():
            p.grad = None
        pyro.set_rng_seed(seed)
        loss = elbo.loss_and_grads(conjugate_model, guide, data)
        return loss, [p.grad.clone() for p in flow.parameters()]

    jit, eager = JitTrace_ELBO(), Trace_ELBO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss_and_grads(jit, 0)  # the first call traces
    # the compiled program draws fresh noise each call and computes what the eager ELBO computes
    for seed in (1, 2):
        lj, gj = loss_and_grads(jit, seed)
        le, ge = loss_and_grads(eager, seed)
        assert math.isclose(lj, le, rel_tol=1e-5, abs_tol=1e-4)
        for a, b in zip(gj, ge):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    svi = SVI(conjugate_model, guide, Adam({"lr": 1e-2}), jit)
    losses = [svi.step(data) for _ in range(5)]
    assert all(math.isfinite(v) for v in losses)


# ------------------------------------------------------------------------------------------------- TransformModule API
NO_INVERSE_IN_PYRO = {  # pyro's own versions of these raise NotImplementedError on fresh data (pyro#2718)
    "Planar": lambda: T.PlanarTransform(3),
    "Radial": lambda: T.RadialTransform(3),
    "Sylvester": lambda: T.SylvesterTransform(3),
    "BNAF-iaf": lambda: T.BlockNAFTransform(3, hidden_factor=4, orientation="iaf"),
    "BNAF-maf": lambda: T.BlockNAFTransform(3, hidden_factor=4, orientation="maf"),
}


@pytest.mark.parametrize("name", list(NO_INVERSE_IN_PYRO))
def test_transform_module_inverse_on_fresh_data(name):
    torch.manual_seed(0)
    t = perturb(NO_INVERSE_IN_PYRO[name]().double(), 0.2)
    assert isinstance(t, dist.TransformModule) and isinstance(t, torch.distributions.Transform)
    assert isinstance(t, torch.nn.Module) and len(list(t.parameters())) > 0
    y = torch.randn(50, 3, dtype=torch.float64) * 2  # never produced by t: no cache can help
    x = t.inv(y)
    torch.testing.assert_close(t(x), y, atol=1e-9, rtol=1e-9)
    # the inverse's log-det is minus the forward one, through the torch Transform protocol
    torch.testing.assert_close(t.inv.log_abs_det_jacobian(y, x), -t.log_abs_det_jacobian(x, y), atol=1e-9,
                               rtol=1e-9)
    d = dist.TransformedDistribution(_std_normal(3, torch.float64), [t])
    expected = _std_normal(3, torch.float64).log_prob(x) - t.log_abs_det_jacobian(x, y)
    torch.testing.assert_close(d.log_prob(y), expected, atol=1e-9, rtol=1e-9)
    # and as a pyro module
    pyro.module(name, t)
    assert {k for k in pyro.get_param_store().keys()} == {f"{name}$$${n}" for n, _ in t.named_parameters()}


@pytest.mark.parametrize("vectorize", [False, True])
def test_iaf_guide_in_svi_never_runs_the_inverse(vectorize):
    """Trace_ELBO scores the guide's own sample: the density comes from the sampling pass (one pass per step)."""
    flow = flows.IAF(2, num_transforms=2, hidden_dims=(8, 8))
    calls = []
    for t in flow.transforms:
        t._inverse_ld = lambda y, c, _orig=t._inverse_ld: (calls.append(1), _orig(y, c))[1]

    def model():
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    def guide():
        pyro.module("flow", flow)
        pyro.sample("z", flow())

    elbo = Trace_ELBO(num_particles=4, vectorize_particles=vectorize, max_plate_nesting=0)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
    assert math.isfinite(svi.step())
    assert not calls
