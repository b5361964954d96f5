"""numpyroflows.infer.posterior.PosteriorDraws: PSIS-resampled ``sample_posterior`` against a known posterior.

Known answer: z ~ N(mu0, s0² I), x_i | z ~ N(z, σ² I), i = 1..n, has the Gaussian posterior N(m, v I) with
v = 1 / (1 / s0² + n / σ²) and m = v (mu0 / s0² + Σ_i x_i / σ²). The guides here are deliberately wrong: centred
0.4 posterior sd off m and 0.8 times too narrow (PSIS k̂ ≈ 1 - 0.8² = 0.36, repairable; the weights' ESS is about
S / 4.6), or 4 times too narrow (k̂ ≈ 1 - 0.25² = 0.94, not repairable). Resampling draws of q with weights w gives
the density q · w, so the right weights p / q give the posterior, no weights give q itself, and the wrong sign p · q
gives p · q², narrower than q: the tolerances below are tight enough that the raw guide draws fail them (checked in the
test), so wrong weights fail them too.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from numpyro.infer.initialization import init_to_value

from numpyroflows.infer.posterior import PosteriorDraws

pytest.importorskip("arviz")  # PSIS runs through ArviZ
pytestmark = pytest.mark.filterwarnings("error:.*one draw at a time")

MU0, S0, SIGMA, N_OBS = 1.0, 2.0, 1.0, 20
DATA = np.random.default_rng(0).normal([0.5, -0.5], SIGMA, size=(N_OBS, 2))
POST_VAR = 1.0 / (1.0 / S0**2 + N_OBS / SIGMA**2)
POST_MEAN = POST_VAR * (MU0 / S0**2 + DATA.sum(0) / SIGMA**2)
POST_SD = math.sqrt(POST_VAR)
NUM = 10_000


class NormalGuide(PosteriorDraws, AutoNormal):
    pass


class MVNGuide(PosteriorDraws, AutoMultivariateNormal):
    pass


def model(x):
    z = numpyro.sample("z", dist.Normal(jnp.full(2, MU0), S0).to_event(1))
    numpyro.deterministic("z_sum", z.sum())
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(z, SIGMA).to_event(1), obs=x)


def positive_model(x):
    """The same posterior for log s, with s > 0: the guide works on log s, so its log|det| enters log q."""
    s = numpyro.sample("s", dist.LogNormal(jnp.full(2, MU0), S0).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(jnp.log(s), SIGMA).to_event(1), obs=x)


def _guide(cls, fn, site: str, scale: float, value) -> tuple:
    guide = cls(fn, init_loc_fn=init_to_value(values={site: jnp.asarray(value)}), init_scale=scale * POST_SD)
    tr = handlers.trace(handlers.seed(guide, 0)).get_trace(jnp.asarray(DATA))
    return guide, {name: site["value"] for name, site in tr.items() if site["type"] == "param"}


def _errors(draws) -> tuple[float, float]:
    """(max |mean - m| in posterior sds, max |sd / sqrt(v) - 1|) over the two coordinates."""
    draws = np.asarray(draws).reshape(-1, 2)
    return (float(np.max(np.abs(draws.mean(0) - POST_MEAN)) / POST_SD),
            float(np.max(np.abs(draws.std(0) / POST_SD - 1))))


def test_psis_draws_recover_the_exact_posterior_from_a_too_narrow_guide():
    guide, params = _guide(NormalGuide, model, "z", 0.8, POST_MEAN + 0.4 * POST_SD)
    key, x = jax.random.PRNGKey(1), jnp.asarray(DATA)
    raw = guide.sample_posterior(key, params, x, sample_shape=(NUM,))["z"]
    fixed = guide.sample_posterior(key, params, x, sample_shape=(NUM,), psis=True)["z"]
    raw_mean_err, raw_sd_err = _errors(raw)
    assert raw_mean_err > 0.3 and raw_sd_err > 0.15  # the guide is off: 0.4 sd shifted, sd 0.8
    mean_err, sd_err = _errors(fixed)
    assert mean_err < 0.12 and sd_err < 0.12
    assert guide.last_psis.khat < 0.7 and guide.last_psis.num_samples == NUM
    # the same key gives the same draws; resampling is with replacement, so heavy draws repeat
    again = guide.sample_posterior(key, params, x, sample_shape=(NUM,), psis=True)["z"]
    np.testing.assert_array_equal(np.asarray(fixed), np.asarray(again))
    assert len(np.unique(np.asarray(fixed), axis=0)) < NUM


def test_psis_draws_account_for_the_constraining_transform():
    guide, params = _guide(MVNGuide, positive_model, "s", 0.8, np.exp(POST_MEAN + 0.4 * POST_SD))
    key = jax.random.PRNGKey(2)
    raw = guide.sample_posterior(key, params, jnp.asarray(DATA), sample_shape=(NUM,))["s"]
    fixed = guide.sample_posterior(key, params, jnp.asarray(DATA), sample_shape=(NUM,), psis=True)["s"]
    assert np.all(np.asarray(fixed) > 0)
    assert _errors(np.log(raw))[0] > 0.3
    mean_err, sd_err = _errors(np.log(fixed))
    assert mean_err < 0.12 and sd_err < 0.12  # without the log|det| in log q the mean would be v = 0.22 sd low


def test_a_hopeless_guide_warns_that_the_draws_are_not_reliable():
    guide, params = _guide(NormalGuide, model, "z", 0.25, POST_MEAN)
    with pytest.warns(UserWarning, match=r"k̂ = .* >= 0.7: .*not reliable.*try a richer guide"):
        guide.sample_posterior(jax.random.PRNGKey(0), params, jnp.asarray(DATA), sample_shape=(2000,), psis=True)
    assert guide.last_psis.khat > 0.7 and guide.last_psis.verdict.startswith("unreliable")


def test_shapes_sites_and_psis_false_match_numpyro_other_keys_give_other_draws():
    guide, params = _guide(NormalGuide, model, "z", 1.0, POST_MEAN)
    plain, plain_params = _guide(AutoNormal, model, "z", 1.0, POST_MEAN)
    key, x = jax.random.PRNGKey(3), jnp.asarray(DATA)
    assert guide.last_psis is None
    raw = guide.sample_posterior(key, params, x, sample_shape=(5, 10))
    expected = plain.sample_posterior(key, plain_params, x, sample_shape=(5, 10))
    assert set(raw) == set(expected) == {"z", "z_sum"}
    for name in expected:
        np.testing.assert_array_equal(np.asarray(raw[name]), np.asarray(expected[name]))
    with pytest.warns(UserWarning, match="unreliable below 100 draws"):
        resampled = guide.sample_posterior(key, params, x, sample_shape=(5, 10), psis=True)
    assert {k: v.shape for k, v in resampled.items()} == {"z": (5, 10, 2), "z_sum": (5, 10)}
    assert isinstance(resampled["z"], jax.Array)
    np.testing.assert_allclose(resampled["z_sum"], resampled["z"].sum(-1), rtol=1e-5, atol=1e-5)
    assert guide.last_psis.num_samples == 50
    with pytest.warns(UserWarning, match="unreliable below 100 draws"):
        other = guide.sample_posterior(jax.random.PRNGKey(4), params, x, sample_shape=(5, 10), psis=True)
    assert not np.array_equal(np.asarray(other["z"]), np.asarray(resampled["z"]))


def test_fewer_than_25_draws_are_refused():
    guide, params = _guide(NormalGuide, model, "z", 1.0, POST_MEAN)
    with pytest.raises(ValueError, match=r"at least 25 draws.*sample_shape=\(4, 6\)"):
        guide.sample_posterior(jax.random.PRNGKey(0), params, jnp.asarray(DATA), sample_shape=(4, 6), psis=True)


def test_autoflowguide_has_psis_draws():
    """AutoFlowGuide carries the mixin: its default (Laplace) start is exact on this Gaussian posterior, so k̂ is
    small and the resampled draws have the posterior's mean."""
    from numpyro.infer import SVI, Trace_ELBO

    from numpyroflows.infer import AutoFlowGuide

    guide = AutoFlowGuide(model, hidden_dims=(8, 8))
    svi = SVI(model, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
    params = svi.get_params(svi.init(jax.random.PRNGKey(0), jnp.asarray(DATA)))
    draws = guide.sample_posterior(jax.random.PRNGKey(3), params, jnp.asarray(DATA), sample_shape=(4000,), psis=True)
    assert draws["z"].shape == (4000, 2) and guide.last_psis.khat < 0.5
    assert np.all(np.abs(np.asarray(draws["z"]).mean(0) - POST_MEAN) < 5 * POST_SD / math.sqrt(4000 / 4))
