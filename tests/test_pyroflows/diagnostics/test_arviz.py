"""pyroflows.diagnostics: PSIS k̂ / ELBO / IW-ELBO / ESS against known answers, and ArviZ InferenceData from Pyro guides.

Known answers: with the guide set to the exact posterior of a conjugate Gaussian model every log weight equals the
log evidence log p(data) (closed form), so ELBO = IW-ELBO = log p(data), ESS = S and k̂ = -inf; a guide much narrower
than the posterior has k̂ > 0.7; per-draw log p / log q / pointwise log-likelihoods match densities recomputed by hand.
"""

from __future__ import annotations

import math
import warnings

import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDelta, AutoMultivariateNormal, AutoNormal
from pyro.nn import PyroParam

import pyroflows
from flowcommon import arviz_compat
from pyroflows.diagnostics import VIDiagnostics, psis, to_inference_data, verdict_for, vi_diagnostics

matplotlib.use("Agg")
az = pytest.importorskip("arviz")
# every model here vectorises except the one that tests the fallback (which expects the warning with pytest.warns)
pytestmark = [pytest.mark.filterwarnings("error:.*one draw at a time"),
              pytest.mark.usefixtures("fresh_param_store")]


# ------------------------------------------------------------------------------------------ conjugate Gaussian
# z ~ N(mu0, S0), x_i | z ~ N(z, Sigma), i = 1..n: the posterior is N(mean, cov) and the evidence is the Gaussian
# marginal of the stacked data, x ~ N(1 ⊗ mu0, J ⊗ S0 + I ⊗ Sigma).
N_OBS = 20


def _problem(dtype: torch.dtype):
    mu0 = torch.tensor([1.0, -1.0], dtype=torch.float64)
    s0 = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    sigma = torch.tensor([[4.0, 2.4], [2.4, 2.25]], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    data = torch.tensor([0.5, 1.5], dtype=torch.float64) + torch.randn(
        N_OBS, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(sigma).T
    cov = torch.linalg.inv(torch.linalg.inv(s0) + N_OBS * torch.linalg.inv(sigma))
    mean = cov @ (torch.linalg.solve(s0, mu0) + torch.linalg.solve(sigma, data.sum(0)))
    joint = torch.kron(torch.ones(N_OBS, N_OBS, dtype=torch.float64), s0) + torch.kron(
        torch.eye(N_OBS, dtype=torch.float64), sigma)
    log_evidence = dist.MultivariateNormal(mu0.repeat(N_OBS), joint).log_prob(data.reshape(-1)).item()
    cast = lambda t: t.to(dtype)  # noqa: E731
    return dict(mu0=cast(mu0), s0=cast(s0), sigma=cast(sigma), data=cast(data), mean=cast(mean), cov=cast(cov),
                log_evidence=log_evidence)


def _model(p):
    def model(x):
        z = pyro.sample("z", dist.MultivariateNormal(p["mu0"], p["s0"]))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.MultivariateNormal(z, p["sigma"]), obs=x)

    return model


def _positive_model(p):
    """The same posterior for log s, with s = exp(z) > 0: tests the constrained space and the guide's log|det|."""

    def model(x):
        s = pyro.sample("s", dist.TransformedDistribution(dist.MultivariateNormal(p["mu0"], p["s0"]),
                                                          dist.transforms.ExpTransform()))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.MultivariateNormal(s.log(), p["sigma"]), obs=x)

    return model


def _exact_mvn_guide(model, p) -> AutoMultivariateNormal:
    guide = AutoMultivariateNormal(model)
    guide(p["data"])
    chol = torch.linalg.cholesky(p["cov"])
    with torch.no_grad():
        guide.loc.copy_(p["mean"])
    guide.scale = PyroParam(chol.diagonal(), guide.scale_constraint)
    guide.scale_tril = PyroParam(chol / chol.diagonal()[:, None], guide.scale_tril_constraint)
    return guide


def _check_exact(diag: VIDiagnostics, log_evidence: float, tol: float, num: int) -> None:
    assert diag.num_samples == num and diag.log_weights.shape == (num,)
    assert np.allclose(diag.log_weights, log_evidence, atol=tol, rtol=0)
    assert diag.elbo == pytest.approx(log_evidence, abs=tol)
    assert diag.iw_elbo == pytest.approx(log_evidence, abs=tol)
    assert diag.ess == pytest.approx(num, rel=1e-6)
    assert diag.khat < 0.5 and not math.isnan(diag.khat)
    assert diag.verdict.startswith("good:")


def test_exact_hand_written_guide_gives_log_evidence_float64():
    p = _problem(torch.float64)

    def guide(x):
        pyro.sample("z", dist.MultivariateNormal(p["mean"], p["cov"]))

    diag = vi_diagnostics(guide, _model(p), p["data"], num_samples=500)
    _check_exact(diag, p["log_evidence"], 1e-4, 500)
    assert diag.khat == -math.inf  # constant weights: documented choice
    assert diag.draws is None
    text = str(diag)
    assert "k-hat" in text and "ESS" in text and "good:" in text


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-4), (torch.float32, 1e-3)])
def test_exact_auto_mvn_on_constrained_site_gives_log_evidence(dtype, tol):
    # AutoMultivariateNormal draws log s from its auxiliary latent; the guide trace's Delta log|det| must cancel the
    # model's log-normal Jacobian exactly for the weights to be constant.
    p = _problem(dtype)
    model = _positive_model(p)
    guide = _exact_mvn_guide(model, p)
    diag = vi_diagnostics(guide, model, p["data"], num_samples=400, resample=True)
    _check_exact(diag, p["log_evidence"], tol, 400)
    assert set(diag.draws) == {"s"} and diag.draws["s"].shape == (400, 2) and (diag.draws["s"] > 0).all()


def test_too_narrow_guide_is_unreliable():
    p = _problem(torch.float64)
    model = _model(p)
    smallest_sd = torch.linalg.eigvalsh(p["cov"]).min().sqrt().item()
    guide = AutoNormal(model, init_loc_fn=lambda site: p["mean"], init_scale=0.1 * smallest_sd)
    # the weights' true Pareto shape is 1 - 0.1² ≈ 0.99; 10^4 draws keep k̂ above 0.8 for every seed tried (20)
    diag = vi_diagnostics(guide, model, p["data"], num_samples=10_000)
    assert diag.khat > 0.7
    assert diag.verdict.startswith("unreliable:") and "richer guide" in diag.verdict
    assert diag.ess < 100
    assert diag.elbo < diag.iw_elbo < p["log_evidence"] + 0.5  # both bounds below log p(data) (up to MC noise)


def test_resampling_a_mean_field_guide_recovers_the_correlation():
    p = _problem(torch.float64)
    model = _model(p)
    sd = p["cov"].diagonal().sqrt()
    corr = (p["cov"][0, 1] / (sd[0] * sd[1])).item()
    guide = AutoNormal(model, init_loc_fn=lambda site: p["mean"], init_scale=1.0)
    guide(p["data"])
    guide.scales.z = 1.5 * sd  # wider than the posterior: bounded weights, k̂ < 0.5
    diag = vi_diagnostics(guide, model, p["data"], num_samples=4000, resample=True)
    assert diag.khat < 0.5 and diag.verdict.startswith("good:")
    draws = diag.draws["z"]
    assert draws.shape == (4000, 2)
    assert abs(corr) > 0.3
    assert np.corrcoef(draws.T)[0, 1] == pytest.approx(corr, abs=0.08)
    assert draws.mean(0) == pytest.approx(p["mean"].numpy(), abs=0.1)


def _wide_mean_field_guide(model, p) -> AutoNormal:
    guide = AutoNormal(model, init_loc_fn=lambda site: p["mean"], init_scale=1.0)
    guide(p["data"])
    guide.scales.z = 1.5 * p["cov"].diagonal().sqrt()  # wider than the posterior: bounded weights, k̂ < 0.5
    return guide


def test_psis_resampled_inference_data_recovers_the_correlation():
    """to_inference_data(psis=True): every group holds the PSIS-resampled draws (az.loo then sees posterior draws)."""
    p = _problem(torch.float64)
    model = _model(p)
    sd = p["cov"].diagonal().sqrt()
    corr = (p["cov"][0, 1] / (sd[0] * sd[1])).item()
    guide = _wide_mean_field_guide(model, p)
    raw = to_inference_data(guide, model, p["data"], num_samples=4000, num_chains=2)
    data = to_inference_data(guide, model, p["data"], num_samples=4000, num_chains=2, psis=True)
    assert raw.attrs["draws"] == "guide" and data.attrs["draws"] == "psis_resampled"
    z = data.posterior["z"].values.reshape(-1, 2)
    assert abs(np.corrcoef(raw.posterior["z"].values.reshape(-1, 2).T)[0, 1]) < 0.1  # mean field: uncorrelated
    assert np.corrcoef(z.T)[0, 1] == pytest.approx(corr, abs=0.08)
    # the groups stay aligned: each resampled draw keeps its own log-likelihood and log weight
    ll = data.log_likelihood["x"].values.reshape(4000, -1)
    expected = dist.MultivariateNormal(torch.as_tensor(z[:20, None]), p["sigma"]).log_prob(p["data"])
    np.testing.assert_allclose(ll[:20], expected.numpy(), atol=1e-8)
    stats = data.sample_stats
    np.testing.assert_allclose(stats["log_weight"].values, stats["log_p"].values - stats["log_q"].values)


def test_psis_resampling_a_bad_guide_warns():
    p = _problem(torch.float64)
    model = _model(p)
    guide = AutoNormal(model, init_loc_fn=lambda site: p["mean"], init_scale=0.05)
    with pytest.warns(UserWarning, match="resampling cannot repair"):
        to_inference_data(guide, model, p["data"], num_samples=2000, psis=True)


def test_an_unreliable_flow_guide_is_not_told_to_use_a_flow():
    assert "richer guide (e.g. a flow)" in verdict_for(0.9)
    advice = verdict_for(0.9, flow_guide=True)
    assert advice.startswith("unreliable:") and "a flow" not in advice and "warm_start" in advice
    p = _problem(torch.float64)
    model = _model(p)
    guide = pyroflows.AutoFlowGuide(model, warm_start=None)  # untrained from N(init_loc, init_scale²)
    guide(p["data"])  # untrained: far from the posterior
    diag = vi_diagnostics(guide, model, p["data"], num_samples=2000)
    assert diag.khat > 0.7 and diag.verdict == verdict_for(diag.khat, flow_guide=True)


def test_loop_fallback_for_a_model_that_cannot_vectorise():
    p = _problem(torch.float64)

    def model(x):
        z = pyro.sample("z", dist.MultivariateNormal(p["mu0"], p["s0"]))
        loc = torch.stack([torch.tensor(float(z[0])), torch.tensor(float(z[1]))]).double()  # scalars only
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.MultivariateNormal(loc, p["sigma"]), obs=x)

    def guide(x):
        pyro.sample("z", dist.MultivariateNormal(p["mean"], p["cov"]))

    with pytest.warns(UserWarning, match="one draw at a time"):
        idata = to_inference_data(guide, model, p["data"], num_samples=40, posterior_predictive=True)
    assert np.allclose(idata.sample_stats["log_weight"].values, p["log_evidence"], atol=1e-4)
    assert idata.posterior["z"].shape == (1, 40, 2)
    assert idata.posterior_predictive["x"].shape == (1, 40, N_OBS, 2)
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "data")


def test_misaligned_batch_dims_are_caught_on_a_small_probe(monkeypatch):
    """``scale[..., None]`` on a global site puts the draws left of an extra dim: vectorised, the draws broadcast
    against each other (S x S x N). The probe on 3 draws catches it, so the full S is never allocated, and the loop
    gives each draw its own weight."""
    import pyroflows.diagnostics.arviz as A

    data = torch.randn(30, dtype=torch.float64)
    prior, q = dist.LogNormal(torch.tensor(0.0, dtype=torch.float64), 1.0), dist.LogNormal(
        torch.tensor(0.1, dtype=torch.float64), 0.2)

    def model(x):
        scale = pyro.sample("scale", prior)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, scale[..., None]), obs=x)

    def guide(x):
        pyro.sample("scale", q)

    sizes = []
    real = A._evaluate_vectorised
    monkeypatch.setattr(A, "_evaluate_vectorised", lambda *a, **k: (sizes.append(a[4]), real(*a, **k))[1])
    pyro.set_rng_seed(0)
    with pytest.warns(UserWarning, match="one draw at a time"):
        idata = to_inference_data(guide, model, data, num_samples=500)
    assert sizes == [3]  # only the probe ran vectorised
    scale = torch.as_tensor(idata.posterior["scale"].values.ravel())
    expected = (dist.Normal(0.0, scale[:, None]).log_prob(data).sum(-1) + prior.log_prob(scale) - q.log_prob(scale))
    assert np.allclose(idata.sample_stats["log_weight"].values.ravel(), expected.numpy(), atol=1e-8)


# ------------------------------------------------------------------------------------------ eight schools
Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(sigma, y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfNormal(5.0))
    with pyro.plate("school", sigma.shape[0]):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * eta)
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


@pytest.fixture(scope="module")
def eight_schools_idata():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(eight_schools)
    optim = pyro.optim.Adam({"lr": 0.05})
    svi = pyro.infer.SVI(eight_schools, guide, optim, pyro.infer.Trace_ELBO())
    for _ in range(300):
        svi.step(SIGMA, Y)
    idata = to_inference_data(guide, eight_schools, SIGMA, Y, num_samples=400, num_chains=4,
                              posterior_predictive=True)
    pyro.clear_param_store()
    return idata


def test_inference_data_groups_shapes_and_dims(eight_schools_idata):
    idata = eight_schools_idata
    assert set(arviz_compat.group_names(idata)) >= {"posterior", "sample_stats", "observed_data", "log_likelihood",
                                   "posterior_predictive"}
    post = idata.posterior
    assert list(post.data_vars) == ["mu", "tau", "eta", "theta"]  # model order
    assert post["mu"].dims == ("chain", "draw") and post["mu"].shape == (4, 100)
    for name in ("eta", "theta"):
        assert post[name].dims == ("chain", "draw", "school") and post[name].shape == (4, 100, 8)
    assert list(post["school"].values) == list(range(8))
    assert (post["tau"].values > 0).all()  # HalfNormal site in its constrained space
    assert np.allclose(post["theta"], post["mu"] + post["tau"] * post["eta"], atol=1e-5)
    assert idata.observed_data["obs"].dims == ("school",)
    assert np.allclose(idata.observed_data["obs"].values, Y.numpy())
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "school")
    assert idata.posterior_predictive["obs"].dims == ("chain", "draw", "school")
    # replicated data y_rep ~ N(theta, sigma) at each draw's theta: standardised residuals are N(0, 1)
    resid = ((idata.posterior_predictive["obs"] - post["theta"]) / SIGMA.numpy()).values.reshape(-1)
    assert abs(resid.mean()) < 0.1 and resid.std() == pytest.approx(1.0, abs=0.05)
    for name in ("log_p", "log_q", "log_weight"):
        assert idata.sample_stats[name].dims == ("chain", "draw")
    attrs = idata.attrs
    for key in ("psis_khat", "elbo", "iw_elbo", "ess", "verdict", "inference_library", "inference_library_version",
                "pyroflows_version", "created_at"):
        assert key in attrs and key in post.attrs
    assert attrs["inference_library"] == "pyro" and attrs["inference_library_version"] == pyro.__version__
    assert attrs["verdict"] == verdict_for(attrs["psis_khat"])


def test_inference_data_values_match_hand_computed_densities(eight_schools_idata):
    post, stats = eight_schools_idata.posterior, eight_schools_idata.sample_stats
    mu, tau, eta = (torch.as_tensor(post[k].values, dtype=torch.float64) for k in ("mu", "tau", "eta"))
    theta = mu[..., None] + tau[..., None] * eta
    pointwise = dist.Normal(theta, SIGMA.double()).log_prob(Y.double())
    assert np.allclose(eight_schools_idata.log_likelihood["obs"].values, pointwise.numpy(), atol=1e-4)
    log_p = (dist.Normal(0.0, 5.0).log_prob(mu) + dist.HalfNormal(5.0).log_prob(tau)
             + dist.Normal(0.0, 1.0).log_prob(eta).sum(-1) + pointwise.sum(-1))
    assert np.allclose(stats["log_p"].values, log_p.numpy(), atol=1e-3)
    assert np.allclose(stats["log_weight"].values, stats["log_p"].values - stats["log_q"].values)
    lw = stats["log_weight"].values.reshape(-1)
    assert eight_schools_idata.attrs["elbo"] == pytest.approx(lw.mean(), rel=1e-6)


def test_arviz_functions_run(eight_schools_idata):
    import matplotlib.pyplot as plt

    idata = eight_schools_idata
    summary = az.summary(idata)
    assert "mu" in summary.index and "theta[0]" in summary.index and "tau" in summary.index
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loo warns about large pointwise k̂ for a few schools
        loo = az.loo(idata, pointwise=True)
    if arviz_compat.major() == 0:
        assert np.isfinite(loo.elpd_loo) and loo.loo_i.shape == (8,)
    else:
        assert np.isfinite(loo.elpd) and loo.elpd_i.shape == (8,)
        stats = idata.sample_stats  # ArviZ 1.x corrects PSIS-LOO for draws from the guide rather than the posterior
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vi_loo = az.loo_approximate_posterior(idata, stats["log_p"], stats["log_q"], pointwise=True)
        assert np.isfinite(vi_loo.elpd) and vi_loo.elpd_i.shape == (8,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)  # raised inside ArviZ 0.23
        arviz_compat.plot_posterior(idata, var_names=["mu", "tau"])  # az.plot_posterior in 0.x, plot_dist in 1.x
        az.plot_pair(idata, var_names=["mu", "tau"])
    plt.close("all")


def test_nested_plates_and_event_dims_are_named():
    def model(y):
        conc = pyro.sample("conc", dist.Gamma(2.0, 1.0))
        with pyro.plate("a", 3, dim=-2):
            scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
            with pyro.plate("b", 4, dim=-1):
                p = pyro.sample("p", dist.Dirichlet(conc.unsqueeze(-1) * torch.ones(5)))
                pyro.deterministic("pmax", p.max(-1).values)
                pyro.sample("y", dist.Normal(p, scale.unsqueeze(-1)).to_event(1), obs=y)

    y = torch.rand(3, 4, 5)
    idata = to_inference_data(AutoNormal(model), model, y, num_samples=60, num_chains=2, posterior_predictive=True)
    dims = lambda group: {k: v.dims for k, v in idata[group].data_vars.items()}  # noqa: E731
    assert dims("posterior") == {"conc": ("chain", "draw"), "scale": ("chain", "draw", "a", "scale_dim_1"),
                                 "p": ("chain", "draw", "a", "b", "p_dim_2"), "pmax": ("chain", "draw", "a", "b")}
    assert idata.posterior["p"].shape == (2, 30, 3, 4, 5)
    assert np.allclose(idata.posterior["p"].sum("p_dim_2"), 1.0, atol=1e-5)  # simplex: constrained space
    assert np.allclose(idata.posterior["pmax"], idata.posterior["p"].max("p_dim_2"))
    assert dims("log_likelihood") == {"y": ("chain", "draw", "a", "b")}
    assert dims("observed_data") == {"y": ("a", "b", "y_dim_2")}
    assert dims("posterior_predictive") == {"y": ("chain", "draw", "a", "b", "y_dim_2")}


# ------------------------------------------------------------------------------------------ PSIS and errors


def test_psis_edge_cases():
    khat, lw = psis(np.full(100, -3.0))
    assert khat == -math.inf and np.allclose(np.exp(lw), 0.01)
    rng = np.random.default_rng(0)
    khat_light, _ = psis(rng.normal(size=2000))  # lognormal weights: light tail
    khat_heavy, _ = psis(np.log(rng.pareto(1.0, size=2000) + 1.0))  # Pareto tail index 1: k = 1
    assert khat_light < 0.5 < 0.7 < khat_heavy
    with pytest.raises(ValueError, match="num_samples"):
        psis(np.zeros(10))
    with pytest.raises(ValueError, match="nan or \\+inf"):
        psis(np.array([0.0] * 40 + [np.nan]))
    with pytest.raises(ValueError, match="support"):
        psis(np.full(40, -np.inf))
    assert verdict_for(0.3).startswith("good:") and verdict_for(0.6).startswith("usable after PSIS:")
    assert verdict_for(0.9).startswith("unreliable:") and verdict_for(math.nan).startswith("unreliable:")


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="point mass"):
        vi_diagnostics(AutoDelta(eight_schools), eight_schools, SIGMA, Y, num_samples=50)

    def half_guide(sigma, y=None):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="does not sample"):
        vi_diagnostics(half_guide, eight_schools, SIGMA, Y, num_samples=50)

    def subsampled(sigma, y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("school", 8, subsample_size=4) as idx:
            pyro.sample("obs", dist.Normal(mu, sigma[idx]), obs=y[idx])

    with pytest.raises(ValueError, match="subsample_size=None"):
        vi_diagnostics(AutoNormal(subsampled), subsampled, SIGMA, Y, num_samples=50)
    with pytest.raises(ValueError, match="multiple of num_chains"):
        to_inference_data(AutoNormal(eight_schools), eight_schools, SIGMA, Y, num_samples=100, num_chains=3)
