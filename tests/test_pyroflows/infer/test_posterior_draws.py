"""pyroflows.infer.posterior.PosteriorDraws: PSIS-resampled ``sample_posterior`` against a known posterior (the mirror
of tests/test_numpyroflows/infer/test_posterior_draws.py).

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

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

from pyroflows.infer.posterior import PosteriorDraws

pytest.importorskip("arviz")  # PSIS runs through ArviZ
pytestmark = [pytest.mark.usefixtures("fresh_param_store"), pytest.mark.filterwarnings("error:.*one draw at a time")]

MU0, S0, SIGMA, N_OBS = 1.0, 2.0, 1.0, 20
DATA = torch.as_tensor(np.random.default_rng(0).normal([0.5, -0.5], SIGMA, size=(N_OBS, 2)))
POST_VAR = 1.0 / (1.0 / S0**2 + N_OBS / SIGMA**2)
POST_MEAN = POST_VAR * (MU0 / S0**2 + DATA.sum(0) / SIGMA**2)
POST_SD = math.sqrt(POST_VAR)
NUM = 10_000


class NormalGuide(PosteriorDraws, AutoNormal):
    pass


class MVNGuide(PosteriorDraws, AutoMultivariateNormal):
    pass


def model(x):
    z = pyro.sample("z", dist.Normal(torch.full((2,), MU0, dtype=x.dtype), S0).to_event(1))
    pyro.deterministic("z_sum", z.sum(-1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(z, SIGMA).to_event(1), obs=x)


def positive_model(x):
    """The same posterior for log s, with s > 0: the guide works on log s, so its log|det| enters log q."""
    s = pyro.sample("s", dist.LogNormal(torch.full((2,), MU0, dtype=x.dtype), S0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(s.log(), SIGMA).to_event(1), obs=x)


def _guide(cls, fn, scale: float, value: torch.Tensor):
    return cls(fn, init_loc_fn=lambda site: value.clone(), init_scale=scale * POST_SD)


def _errors(draws: torch.Tensor) -> tuple[float, float]:
    """(max |mean - m| in posterior sds, max |sd / sqrt(v) - 1|) over the two coordinates."""
    draws = draws.reshape(-1, 2)
    return (float((draws.mean(0) - POST_MEAN).abs().max()) / POST_SD,
            float((draws.std(0) / POST_SD - 1).abs().max()))


def test_psis_draws_recover_the_exact_posterior_from_a_too_narrow_guide():
    guide = _guide(NormalGuide, model, 0.8, POST_MEAN + 0.4 * POST_SD)
    raw = guide.sample_posterior(DATA, num_samples=NUM)["z"]
    pyro.set_rng_seed(1)
    fixed = guide.sample_posterior(DATA, num_samples=NUM, psis=True)["z"]
    raw_mean_err, raw_sd_err = _errors(raw)
    assert raw_mean_err > 0.3 and raw_sd_err > 0.15  # the guide is off: 0.4 sd shifted, sd 0.8
    mean_err, sd_err = _errors(fixed)
    assert mean_err < 0.12 and sd_err < 0.12
    assert guide.last_psis.khat < 0.7 and guide.last_psis.num_samples == NUM
    # the same seed gives the same draws, another seed others; resampling is with replacement, so heavy draws repeat
    pyro.set_rng_seed(1)
    assert torch.equal(guide.sample_posterior(DATA, num_samples=NUM, psis=True)["z"], fixed)
    assert not torch.equal(guide.sample_posterior(DATA, num_samples=NUM, psis=True)["z"], fixed)
    assert len(torch.unique(fixed, dim=0)) < NUM


def test_psis_draws_account_for_the_constraining_transform():
    guide = _guide(MVNGuide, positive_model, 0.8, (POST_MEAN + 0.4 * POST_SD).exp())
    raw = guide.sample_posterior(DATA, num_samples=NUM)["s"]
    fixed = guide.sample_posterior(DATA, num_samples=NUM, psis=True)["s"]
    assert (fixed > 0).all() and _errors(raw.log())[0] > 0.3
    mean_err, sd_err = _errors(fixed.log())
    assert mean_err < 0.12 and sd_err < 0.12  # without the log|det| in log q the mean would be v = 0.22 sd low


def test_a_hopeless_guide_warns_that_the_draws_are_not_reliable():
    guide = _guide(NormalGuide, model, 0.25, POST_MEAN)
    with pytest.warns(UserWarning, match=r"k̂ = .* >= 0.7: .*not reliable.*try a richer guide"):
        guide.sample_posterior(DATA, num_samples=2000, psis=True)
    assert guide.last_psis.khat > 0.7 and guide.last_psis.verdict.startswith("unreliable")


@pytest.mark.parametrize("cls", [NormalGuide, MVNGuide])
def test_shapes_and_plain_guide_draws(cls):
    guide = _guide(cls, model, 0.75, POST_MEAN)
    assert guide.last_psis is None
    raw = guide.sample_posterior(DATA, num_samples=NUM)
    assert set(raw) == {"z"} and raw["z"].shape == (NUM, 2) and not raw["z"].requires_grad
    # psis=False: the guide's own draws, N(m, (0.75 sqrt(v))²) here
    np.testing.assert_allclose(raw["z"].mean(0), POST_MEAN, atol=0.1 * POST_SD)
    np.testing.assert_allclose(raw["z"].std(0), 0.75 * POST_SD, rtol=0.05)
    pyro.set_rng_seed(2)
    first = guide.sample_posterior(DATA, num_samples=30)["z"]
    pyro.set_rng_seed(2)
    assert torch.equal(guide.sample_posterior(DATA, num_samples=30)["z"], first)
    with pytest.warns(UserWarning, match="unreliable below 100 draws"):
        resampled = guide.sample_posterior(DATA, num_samples=50, psis=True)
    assert set(resampled) == {"z"} and resampled["z"].shape == (50, 2) and resampled["z"].dtype == DATA.dtype
    assert guide.last_psis.num_samples == 50
    with pytest.raises(ValueError, match="at least 25 draws.*num_samples=24"):
        guide.sample_posterior(DATA, num_samples=24, psis=True)


@pytest.mark.filterwarnings("ignore:PSIS k")  # the guide is untrained
def test_latent_sites_in_plates_and_constrained_sites_have_one_draw_axis_first():
    def local_model(x):
        scale = pyro.sample("scale", dist.HalfNormal(1.0))
        with pyro.plate("data", x.shape[0]):
            loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(loc.unsqueeze(-1), scale.unsqueeze(-1)).to_event(1), obs=x.float())

    guide = NormalGuide(local_model)
    for psis in (False, True):
        draws = guide.sample_posterior(DATA, num_samples=200, psis=psis)
        assert {k: tuple(v.shape) for k, v in draws.items()} == {"scale": (200,), "loc": (200, N_OBS)}
        assert (draws["scale"] > 0).all()


def test_autoflowguide_has_psis_draws():
    """AutoFlowGuide carries the mixin: its default (Laplace) start is exact on this Gaussian posterior, so k̂ is
    small and the resampled draws have the posterior's mean."""
    from pyroflows.infer import AutoFlowGuide

    guide = AutoFlowGuide(model, hidden_dims=(8, 8))
    guide(DATA)
    pyro.set_rng_seed(3)
    draws = guide.sample_posterior(DATA, num_samples=4000, psis=True)
    assert draws["z"].shape == (4000, 2) and guide.last_psis.khat < 0.5
    assert ((draws["z"].mean(0) - POST_MEAN).abs() < 5 * POST_SD / math.sqrt(4000 / 4)).all()
