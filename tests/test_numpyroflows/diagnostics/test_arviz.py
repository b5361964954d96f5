"""numpyroflows.diagnostics: PSIS k̂ / ELBO / IW-ELBO / ESS against known answers, and ArviZ InferenceData from NumPyro
guides (the mirror of tests/test_pyroflows/diagnostics/test_arviz.py).

Known answers: with the guide set to the exact posterior of a conjugate Gaussian model every log weight equals the
log evidence log p(data) (closed form), so ELBO = IW-ELBO = log p(data), ESS = S and k̂ = -inf; a guide much narrower
than the posterior has k̂ > 0.7; per-draw log p / pointwise log-likelihoods match densities recomputed by hand.
Precision: ``jax.enable_x64`` is a context manager inside each float64 test (no global x64 setting leaks).
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import numpyroflows
from flowcommon import arviz_compat
from numpyroflows.diagnostics import VIDiagnostics, psis, to_inference_data, verdict_for, vi_diagnostics

matplotlib.use("Agg")
az = pytest.importorskip("arviz")
# every model here vectorises except the one that tests the fallback (which expects the warning with pytest.warns)
pytestmark = pytest.mark.filterwarnings("error:.*one draw at a time")

N_OBS = 20


# ------------------------------------------------------------------------------------------ conjugate Gaussian
# z ~ N(mu0, S0), x_i | z ~ N(z, Sigma), i = 1..n: the posterior is N(mean, cov) and the evidence is the Gaussian
# marginal of the stacked data, x ~ N(1 ⊗ mu0, J ⊗ S0 + I ⊗ Sigma).


def _mvn_logpdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    diff = x - mean
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (diff @ np.linalg.solve(cov, diff) + logdet + x.size * math.log(2 * math.pi)))


def _problem(dtype) -> dict:
    mu0, s0 = np.array([1.0, -1.0]), np.array([[4.0, 1.0], [1.0, 3.0]])
    sigma = np.array([[4.0, 2.4], [2.4, 2.25]])
    rng = np.random.default_rng(1)
    data = np.array([0.5, 1.5]) + rng.normal(size=(N_OBS, 2)) @ np.linalg.cholesky(sigma).T
    cov = np.linalg.inv(np.linalg.inv(s0) + N_OBS * np.linalg.inv(sigma))
    mean = cov @ (np.linalg.solve(s0, mu0) + np.linalg.solve(sigma, data.sum(0)))
    joint = np.kron(np.ones((N_OBS, N_OBS)), s0) + np.kron(np.eye(N_OBS), sigma)
    log_evidence = _mvn_logpdf(data.reshape(-1), np.tile(mu0, N_OBS), joint)
    arrays = {k: jnp.asarray(v, dtype=dtype) for k, v in dict(mu0=mu0, s0=s0, sigma=sigma, data=data, mean=mean,
                                                                cov=cov).items()}
    return {**arrays, "log_evidence": log_evidence, "cov_np": cov, "mean_np": mean}


def _model(p):
    def model(x):
        z = numpyro.sample("z", dist.MultivariateNormal(p["mu0"], covariance_matrix=p["s0"]))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.MultivariateNormal(z, covariance_matrix=p["sigma"]), obs=x)

    return model


def _positive_model(p):
    """The same posterior for log s, with s = exp(z) > 0: tests the constrained space and the guide's log|det|."""

    def model(x):
        s = numpyro.sample("s", dist.TransformedDistribution(
            dist.MultivariateNormal(p["mu0"], covariance_matrix=p["s0"]), dist.transforms.ExpTransform()))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.MultivariateNormal(jnp.log(s), covariance_matrix=p["sigma"]), obs=x)

    return model


def _check_exact(diag: VIDiagnostics, log_evidence: float, tol: float, num: int) -> None:
    assert diag.num_samples == num and diag.log_weights.shape == (num,)
    assert np.allclose(diag.log_weights, log_evidence, atol=tol, rtol=0)
    assert diag.elbo == pytest.approx(log_evidence, abs=tol)
    assert diag.iw_elbo == pytest.approx(log_evidence, abs=tol)
    assert diag.ess == pytest.approx(num, rel=1e-6)
    assert diag.khat < 0.5 and not math.isnan(diag.khat)
    assert diag.verdict.startswith("good:")


def test_exact_hand_written_guide_gives_log_evidence_float64():
    with jax.enable_x64(True):
        p = _problem(jnp.float64)

        def guide(x):
            numpyro.sample("z", dist.MultivariateNormal(p["mean"], covariance_matrix=p["cov"]))

        diag = vi_diagnostics(guide, _model(p), p["data"], params={}, rng_key=jax.random.PRNGKey(1),
                              num_samples=500)
    _check_exact(diag, p["log_evidence"], 1e-4, 500)
    assert diag.khat == -math.inf  # constant weights: documented choice
    assert diag.draws is None
    assert "k-hat" in str(diag) and "good:" in str(diag)


def test_exact_auto_mvn_on_constrained_site_gives_log_evidence():
    # AutoMultivariateNormal draws log s from its auxiliary latent; the guide trace's Delta log|det| must cancel the
    # model's log-normal Jacobian exactly for the weights to be constant.
    with jax.enable_x64(True):
        p = _problem(jnp.float64)
        model = _positive_model(p)
        guide = AutoMultivariateNormal(model)
        params = {"auto_loc": p["mean"], "auto_scale_tril": jnp.linalg.cholesky(p["cov"])}
        diag = vi_diagnostics(guide, model, p["data"], params=params, num_samples=400, resample=True)
    _check_exact(diag, p["log_evidence"], 1e-4, 400)
    assert set(diag.draws) == {"s"} and diag.draws["s"].shape == (400, 2) and (diag.draws["s"] > 0).all()


def test_exact_guide_float32_on_constrained_site():
    # float32 (x64 off, as most users run): a hand-written exact log-normal guide (no autoguide set-up to compile)
    p = _problem(jnp.float32)
    model = _positive_model(p)

    def guide(x):
        numpyro.sample("s", dist.TransformedDistribution(
            dist.MultivariateNormal(p["mean"], covariance_matrix=p["cov"]), dist.transforms.ExpTransform()))

    diag = vi_diagnostics(guide, model, p["data"], params={}, num_samples=400, resample=True)
    assert diag.log_weights.dtype == np.float64 and p["data"].dtype == jnp.float32
    _check_exact(diag, p["log_evidence"], 1e-3, 400)
    assert (diag.draws["s"] > 0).all()


def test_too_narrow_guide_is_unreliable():
    with jax.enable_x64(True):
        p = _problem(jnp.float64)
        model = _model(p)
        smallest_sd = float(np.sqrt(np.linalg.eigvalsh(p["cov_np"]).min()))
        params = {"z_auto_loc": p["mean"], "z_auto_scale": jnp.full(2, 0.1 * smallest_sd)}
        # the weights' true Pareto shape is 1 - 0.1² ≈ 0.99; 10^4 draws keep k̂ well above 0.7
        diag = vi_diagnostics(AutoNormal(model), model, p["data"], params=params, num_samples=10_000)
    assert diag.khat > 0.7
    assert diag.verdict.startswith("unreliable:") and "richer guide" in diag.verdict
    assert diag.ess < 100
    assert diag.elbo < diag.iw_elbo < p["log_evidence"] + 0.5


def test_resampling_a_mean_field_guide_recovers_the_correlation():
    with jax.enable_x64(True):
        p = _problem(jnp.float64)
        model = _model(p)
        sd = np.sqrt(np.diag(p["cov_np"]))
        corr = p["cov_np"][0, 1] / (sd[0] * sd[1])
        params = {"z_auto_loc": p["mean"], "z_auto_scale": jnp.asarray(1.5 * sd)}  # wider: bounded weights
        diag = vi_diagnostics(AutoNormal(model), model, p["data"], params=params, rng_key=jax.random.PRNGKey(3),
                              num_samples=4000, resample=True)
    assert diag.khat < 0.5 and diag.verdict.startswith("good:")
    draws = diag.draws["z"]
    assert draws.shape == (4000, 2)
    assert abs(corr) > 0.3
    assert np.corrcoef(draws.T)[0, 1] == pytest.approx(corr, abs=0.08)
    assert draws.mean(0) == pytest.approx(p["mean_np"], abs=0.1)


def test_psis_resampled_inference_data_recovers_the_correlation():
    """to_inference_data(psis=True): every group holds the PSIS-resampled draws (az.loo then sees posterior draws)."""
    with jax.enable_x64(True):
        p = _problem(jnp.float64)
        model = _model(p)
        sd = np.sqrt(np.diag(p["cov_np"]))
        corr = p["cov_np"][0, 1] / (sd[0] * sd[1])
        params = {"z_auto_loc": p["mean"], "z_auto_scale": jnp.asarray(1.5 * sd)}
        kw = dict(params=params, rng_key=jax.random.PRNGKey(3), num_samples=4000, num_chains=2)
        raw = to_inference_data(AutoNormal(model), model, p["data"], **kw)
        data = to_inference_data(AutoNormal(model), model, p["data"], psis=True, **kw)
    assert raw.attrs["draws"] == "guide" and data.attrs["draws"] == "psis_resampled"
    z = data.posterior["z"].values.reshape(-1, 2)
    assert abs(np.corrcoef(raw.posterior["z"].values.reshape(-1, 2).T)[0, 1]) < 0.1  # mean field: uncorrelated
    assert np.corrcoef(z.T)[0, 1] == pytest.approx(corr, abs=0.08)
    # the groups stay aligned: each resampled draw keeps its own log-likelihood and log weight
    ll = data.log_likelihood["x"].values.reshape(4000, -1)
    data_np, sigma_np = np.asarray(p["data"]), np.asarray(p["sigma"])
    expected = [[_mvn_logpdf(row, zi, sigma_np) for row in data_np] for zi in z[:20]]
    np.testing.assert_allclose(ll[:20], expected, atol=1e-8)
    stats = data.sample_stats
    np.testing.assert_allclose(stats["log_weight"].values, stats["log_p"].values - stats["log_q"].values)


def test_psis_resampling_a_bad_guide_warns():
    with jax.enable_x64(True):
        p = _problem(jnp.float64)
        model = _model(p)
        params = {"z_auto_loc": p["mean"], "z_auto_scale": jnp.full(2, 0.05)}
        with pytest.warns(UserWarning, match="resampling cannot repair"):
            to_inference_data(AutoNormal(model), model, p["data"], params=params, num_samples=2000, psis=True)


def test_an_unreliable_flow_guide_is_not_told_to_use_a_flow():
    assert "richer guide (e.g. a flow)" in verdict_for(0.9)
    advice = verdict_for(0.9, flow_guide=True)
    assert advice.startswith("unreliable:") and "a flow" not in advice and "warm_start" in advice
    with jax.enable_x64(True):
        p = _problem(jnp.float64)
        model = _model(p)
        guide = numpyroflows.AutoFlowGuide(model, warm_start=None)  # untrained from N(init_loc, init_scale²)
        svi = SVI(model, guide, optax.adam(1e-3), Trace_ELBO())
        state = svi.init(jax.random.PRNGKey(0), p["data"])  # barely trained: far from the posterior
        diag = vi_diagnostics(guide, model, p["data"], params=svi.get_params(state), num_samples=2000)
    assert diag.khat > 0.7 and diag.verdict == verdict_for(diag.khat, flow_guide=True)


def test_loop_fallback_for_a_model_that_cannot_vectorise():
    with jax.enable_x64(True):
        p = _problem(jnp.float64)

        def model(x):
            z = numpyro.sample("z", dist.MultivariateNormal(p["mu0"], covariance_matrix=p["s0"]))
            loc = jnp.array([float(z[0]), float(z[1])])  # concrete values only: fails under vmap
            with numpyro.plate("data", x.shape[0]):
                numpyro.sample("x", dist.MultivariateNormal(loc, covariance_matrix=p["sigma"]), obs=x)

        def guide(x):
            numpyro.sample("z", dist.MultivariateNormal(p["mean"], covariance_matrix=p["cov"]))

        with pytest.warns(UserWarning, match="one draw at a time"):
            idata = to_inference_data(guide, model, p["data"], params={}, num_samples=30, posterior_predictive=True)
    assert np.allclose(idata.sample_stats["log_weight"].values, p["log_evidence"], atol=1e-4)
    assert idata.posterior["z"].shape == (1, 30, 2)
    assert idata.posterior_predictive["x"].shape == (1, 30, N_OBS, 2)
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "data")


# ------------------------------------------------------------------------------------------ eight schools
Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfNormal(5.0))
    with numpyro.plate("school", sigma.shape[0]):
        eta = numpyro.sample("eta", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * eta)
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


@pytest.fixture(scope="module")
def eight_schools_idata():
    guide = AutoNormal(eight_schools)
    svi = SVI(eight_schools, guide, optax.adam(0.05), Trace_ELBO())
    result = svi.run(jax.random.PRNGKey(0), 300, SIGMA, Y, progress_bar=False)
    return to_inference_data(guide, eight_schools, SIGMA, Y, params=result.params, rng_key=jax.random.PRNGKey(1),
                             num_samples=400, num_chains=4, posterior_predictive=True)


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
    assert np.allclose(idata.observed_data["obs"].values, Y)
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "school")
    assert idata.posterior_predictive["obs"].dims == ("chain", "draw", "school")
    resid = ((idata.posterior_predictive["obs"] - post["theta"]) / SIGMA).values.reshape(-1)
    assert abs(resid.mean()) < 0.1 and resid.std() == pytest.approx(1.0, abs=0.05)
    for name in ("log_p", "log_q", "log_weight"):
        assert idata.sample_stats[name].dims == ("chain", "draw")
    attrs = idata.attrs
    for key in ("psis_khat", "elbo", "iw_elbo", "ess", "verdict", "inference_library", "inference_library_version",
                "numpyroflows_version", "created_at"):
        assert key in attrs and key in post.attrs
    assert attrs["inference_library"] == "numpyro" and attrs["inference_library_version"] == numpyro.__version__
    assert attrs["verdict"] == verdict_for(attrs["psis_khat"])


def test_inference_data_values_match_hand_computed_densities(eight_schools_idata):
    from scipy import stats as st

    post, stats = eight_schools_idata.posterior, eight_schools_idata.sample_stats
    mu, tau, eta = (post[k].values.astype(np.float64) for k in ("mu", "tau", "eta"))
    theta = mu[..., None] + tau[..., None] * eta
    pointwise = st.norm.logpdf(Y, theta, SIGMA)
    assert np.allclose(eight_schools_idata.log_likelihood["obs"].values, pointwise, atol=1e-4)
    log_p = (st.norm.logpdf(mu, 0.0, 5.0) + st.halfnorm.logpdf(tau, scale=5.0) + st.norm.logpdf(eta).sum(-1)
             + pointwise.sum(-1))
    assert np.allclose(stats["log_p"].values, log_p, atol=1e-3)
    assert np.allclose(stats["log_weight"].values, stats["log_p"].values - stats["log_q"].values)
    assert eight_schools_idata.attrs["elbo"] == pytest.approx(stats["log_weight"].values.mean(), rel=1e-6)


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
        conc = numpyro.sample("conc", dist.Gamma(2.0, 1.0))
        with numpyro.plate("a", 3, dim=-2):
            scale = numpyro.sample("scale", dist.LogNormal(0.0, 1.0))
            with numpyro.plate("b", 4, dim=-1):
                p = numpyro.sample("p", dist.Dirichlet(conc * jnp.ones(5)))
                numpyro.deterministic("pmax", p.max(-1))
                numpyro.sample("y", dist.Normal(p, scale[..., None]).to_event(1), obs=y)

    def guide(y):  # hand-written: no autoguide set-up to compile
        numpyro.sample("conc", dist.Gamma(3.0, 1.0))
        with numpyro.plate("a", 3, dim=-2):
            numpyro.sample("scale", dist.LogNormal(0.0, 0.5))
            with numpyro.plate("b", 4, dim=-1):
                numpyro.sample("p", dist.Dirichlet(2.0 * jnp.ones(5)))

    y = np.random.default_rng(0).uniform(size=(3, 4, 5))
    idata = to_inference_data(guide, model, y, params={}, num_samples=60, num_chains=2, posterior_predictive=True)
    dims = lambda group: {k: v.dims for k, v in idata[group].data_vars.items()}  # noqa: E731
    assert dims("posterior") == {"conc": ("chain", "draw"), "scale": ("chain", "draw", "a", "scale_dim_1"),
                                 "p": ("chain", "draw", "a", "b", "p_dim_2"), "pmax": ("chain", "draw", "a", "b")}
    assert idata.posterior["p"].shape == (2, 30, 3, 4, 5)
    assert np.allclose(idata.posterior["p"].sum("p_dim_2"), 1.0, atol=1e-5)
    assert np.allclose(idata.posterior["pmax"], idata.posterior["p"].max("p_dim_2"))
    assert dims("log_likelihood") == {"y": ("chain", "draw", "a", "b")}
    assert dims("observed_data") == {"y": ("a", "b", "y_dim_2")}
    assert dims("posterior_predictive") == {"y": ("chain", "draw", "a", "b", "y_dim_2")}


# ------------------------------------------------------------------------------------------ PSIS and errors


def test_psis_edge_cases():
    khat, lw = psis(np.full(100, -3.0, dtype=np.float32))
    assert khat == -math.inf and np.allclose(np.exp(lw), 0.01)
    with pytest.raises(ValueError, match="num_samples"):
        psis(np.zeros(10))
    with pytest.raises(ValueError, match="nan or \\+inf"):
        psis(np.array([0.0] * 40 + [np.inf]))
    assert verdict_for(-math.inf).startswith("good:") and verdict_for(0.69).startswith("usable after PSIS:")
    assert verdict_for(0.7).startswith("unreliable:")


def test_errors_name_the_fix():
    # hand-written guides keep this test free of autoguide set-up (compiles); the checks do not care
    def delta_guide(sigma, y=None):
        numpyro.sample("mu", dist.Delta(1.0))
        numpyro.sample("tau", dist.Delta(1.0))
        with numpyro.plate("school", 8):
            numpyro.sample("eta", dist.Delta(0.0))

    with pytest.raises(ValueError, match="point mass"):
        vi_diagnostics(delta_guide, eight_schools, SIGMA, Y, params={}, num_samples=50)

    def half_guide(sigma, y=None):
        numpyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="does not sample"):
        vi_diagnostics(half_guide, eight_schools, SIGMA, Y, params={}, num_samples=50)

    def subsampled(sigma, y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        with numpyro.plate("school", 8, subsample_size=4) as idx:
            numpyro.sample("obs", dist.Normal(mu, sigma[idx]), obs=y[idx])

    with pytest.raises(ValueError, match="subsample_size=None"):
        vi_diagnostics(half_guide, subsampled, SIGMA, Y, params={}, num_samples=50)
    with pytest.raises(ValueError, match="multiple of num_chains"):
        to_inference_data(half_guide, eight_schools, SIGMA, Y, params={}, num_samples=100, num_chains=3)

    def param_guide(sigma, y=None):
        numpyro.sample("mu", dist.Normal(numpyro.param("m", 0.0), 1.0))
        numpyro.sample("tau", dist.HalfNormal(1.0))
        with numpyro.plate("school", 8):
            numpyro.sample("eta", dist.Normal(0.0, 1.0))

    with pytest.warns(UserWarning, match="initial values"):
        vi_diagnostics(param_guide, eight_schools, SIGMA, Y, params={}, num_samples=50)
