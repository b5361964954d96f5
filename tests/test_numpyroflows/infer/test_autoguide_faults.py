"""Faults users hit with ``numpyroflows.infer.AutoFlowGuide`` (issue 18), each fixed and kept fixed (the twins of
tests/test_pyroflows/infer/test_autoguide_faults.py):

- an interrupt (KeyboardInterrupt) during the first build leaves the guide rebuildable (``SVI.init`` works again);
- a wide prior (``N(0, 1e6)``): the mode search runs in float64 (``jax.enable_x64``) and reaches the mode;
- saved ``svi_result.params`` serve a new guide: ``SVI.init(init_params=...)`` continues at the trained loss and
  trains on, ``Predictive(params=...)`` and ``median`` give the trained posterior;
- the default guide at 2000 latents has linear, not quadratic, size and one SVI step costs seconds;
- a warm start on a flat improper prior says why it cannot work and what to do.
"""

from __future__ import annotations

import math
import pickle
import resource
import time

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX")
import jax.numpy as jnp  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.infer import SVI, Predictive, Trace_ELBO  # noqa: E402
from numpyro.infer.autoguide import AutoGuide  # noqa: E402
from numpyro.infer.initialization import init_to_value  # noqa: E402

from numpyroflows.infer import AutoFlowGuide  # noqa: E402

X_OBS = jnp.asarray(np.random.default_rng(0).normal(1.0, 0.5, size=40), jnp.float32)


def small_model(x):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("obs", x.shape[0]):
        numpyro.sample("x", dist.Normal(mu, sigma), obs=x)


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
def test_an_interrupted_first_build_is_rebuilt_by_the_next_init(monkeypatch, step):
    """The interrupt lands in NumPyro's prototype set-up (after it stored the trace), in the flow's construction, or
    in the Laplace step of a warm start; the next ``SVI.init`` builds the guide afresh and SVI trains it."""
    guide = AutoFlowGuide(small_model, hidden_dims=(8, 8), warm_start="laplace" if step == "warm_start" else None)
    if step == "prototype":
        _interrupt_once(monkeypatch, AutoGuide, "_setup_prototype", after=True)
    elif step == "flow":
        _interrupt_once(monkeypatch, AutoFlowGuide, "_build_flow")
    else:
        _interrupt_once(monkeypatch, jax, "hessian")
    svi = SVI(small_model, guide, numpyro.optim.Adam(0.01), Trace_ELBO())
    with pytest.raises(KeyboardInterrupt):
        guide.warm_start(X_OBS) if step == "explicit_warm_start" else svi.init(jax.random.PRNGKey(0), X_OBS)
    state = svi.init(jax.random.PRNGKey(0), X_OBS)
    for _ in range(3):
        state, loss = svi.update(state, X_OBS)
        assert math.isfinite(float(loss))
    assert float(guide.median(svi.get_params(state))["sigma"]) > 0


# ------------------------------------------------------------------------------------------------- 7: wide priors
def wide_model(x):
    loc = numpyro.sample("loc", dist.Normal(0.0, 1e6))
    scale = numpyro.sample("scale", dist.HalfNormal(10.0))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("x", dist.Normal(loc, scale), obs=x)


def test_wide_prior_warm_start_finds_the_mode_in_float64():
    """init_to_median starts loc 5e5 from the data (prior sd 1e6), where the float32 search stalled and called itself
    converged; in float64 it reaches the mode (see the Pyro twin for the closed form), and the guide keeps the model's
    dtype."""
    x = jnp.asarray(1.0 + np.random.default_rng(0).normal(size=50), jnp.float32)
    x64 = np.asarray(x, np.float64)
    n, ss = x64.size, float(((x64 - x64.mean()) ** 2).sum())
    t = (-(n - 1) + math.sqrt((n - 1) ** 2 + 4 * ss / 100)) / (2 / 100)
    guide = AutoFlowGuide(wide_model)
    ws = guide.warm_start(x, method="laplace", rng_key=jax.random.PRNGKey(0))
    assert abs(float(guide._init_latent[0])) > 1e5  # the start is far out
    assert ws.converged and ws.method == "laplace"
    assert abs(float(ws.loc[0]) - x64.mean()) < 1e-5 and abs(float(ws.loc[1]) - 0.5 * math.log(t)) < 1e-5
    assert abs(float(ws.scale_tril[0, 0]) / (math.sqrt(t / n)) - 1) < 1e-3
    assert ws.loc.dtype == jnp.result_type(float)  # the model's own (float32 unless another test switched on x64)


# ------------------------------------------------------------------------------------------------- 11: checkpoints
def _loss(guide, params) -> float:
    """A 2000-particle -ELBO under a fixed key: the same parameters give the same value."""
    return float(Trace_ELBO(num_particles=2000).loss(jax.random.PRNGKey(1), params, small_model, guide, X_OBS))


@pytest.mark.parametrize("warm_start", [None, "auto"])
def test_saved_params_serve_a_new_guide(tmp_path, warm_start):
    guide = AutoFlowGuide(small_model, hidden_dims=(8, 8), warm_start=warm_start)
    result = SVI(small_model, guide, numpyro.optim.Adam(0.02), Trace_ELBO()).run(
        jax.random.PRNGKey(0), 300, X_OBS, progress_bar=False)
    trained = _loss(guide, result.params)
    (tmp_path / "params.pkl").write_bytes(pickle.dumps({k: np.asarray(v) for k, v in result.params.items()}))
    saved = pickle.loads((tmp_path / "params.pkl").read_bytes())

    if warm_start is None:
        fresh_guide = AutoFlowGuide(small_model, hidden_dims=(8, 8), warm_start=None)
        svi = SVI(small_model, fresh_guide, numpyro.optim.Adam(0.02), Trace_ELBO())
        assert _loss(fresh_guide, svi.get_params(svi.init(jax.random.PRNGKey(2), X_OBS))) > trained + 20

    resumed = AutoFlowGuide(small_model, hidden_dims=(8, 8), warm_start=warm_start)
    svi = SVI(small_model, resumed, numpyro.optim.Adam(0.02), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(2), X_OBS, init_params=saved)
    params = svi.get_params(state)
    assert set(params) == set(saved) and all(np.array_equal(np.asarray(params[k]), saved[k]) for k in saved)
    assert _loss(resumed, params) == pytest.approx(trained, abs=1e-3)
    for _ in range(5):
        state, _ = svi.update(state, X_OBS)
    fixed = {k for k in saved if k.rsplit(".", 1)[-1] in ("loc", "scale_tril")}  # the LowerCholeskyAffine's
    assert len(fixed) == 2
    assert all(np.array_equal(np.asarray(v), saved[k]) == (k in fixed) for k, v in svi.get_params(state).items())

    other = AutoFlowGuide(small_model, hidden_dims=(8, 8), warm_start=warm_start)  # Predictive builds it
    draws = Predictive(small_model, guide=other, params=saved, num_samples=4000, return_sites=["mu", "sigma"])(
        jax.random.PRNGKey(3), X_OBS)
    reference = Predictive(small_model, guide=guide, params=result.params, num_samples=4000,
                           return_sites=["mu", "sigma"])(jax.random.PRNGKey(3), X_OBS)
    for site in ("mu", "sigma"):  # the same posterior (other draws: building the guide takes keys): 5 MC errors
        a, b = np.asarray(draws[site]), np.asarray(reference[site])
        assert abs(a.mean() - b.mean()) < 5 * b.std() * math.sqrt(2 / b.size) and abs(a.std() / b.std() - 1) < 0.08
    median, expected = other.median(saved), guide.median(result.params)
    assert all(np.allclose(np.asarray(median[k]), np.asarray(expected[k]), rtol=1e-6) for k in expected)


# ------------------------------------------------------------------------------------------------- 8: large D
D_LARGE = 2000


def large_model(y):
    z = numpyro.sample("z", dist.Normal(jnp.zeros(D_LARGE), 1.0).to_event(1))
    numpyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=y)


def test_default_guide_at_2000_latents_has_linear_size_and_steps_in_seconds():
    """As in the Pyro twin: 3 (D·256 + 256 + 256² + 256 + 256·2D + 2D) + 2D trained parameters (4.8M; 4 D units per
    layer gave 336M), and the fixed layer's D + D² values; ``SVI.init`` (the Laplace warm start, with its D x D
    Hessian) and one update, compilation included, within seconds and bounded memory."""
    y = jax.random.normal(jax.random.PRNGKey(0), (D_LARGE,))
    guide = AutoFlowGuide(large_model)
    svi = SVI(large_model, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    state = svi.init(jax.random.PRNGKey(1), y)
    state, loss = jax.jit(svi.update)(state, y)
    assert math.isfinite(float(loss))
    elapsed = time.perf_counter() - start
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    h, d = 256, D_LARGE
    params = svi.get_params(state)
    assert guide._flow.transforms[0].hidden_dims == (h, h)
    trained = 3 * (d * h + h + h * h + h + h * 2 * d + 2 * d) + 2 * d
    assert sum(int(np.size(v)) for v in params.values()) == trained + d + d * d
    assert elapsed < 120, f"init and one step took {elapsed:.1f} s"
    assert grown_mib < 2000, f"peak memory grew by {grown_mib:.0f} MiB"


# ------------------------------------------------------------------------------------------------- 10: flat prior
def flat_model():
    numpyro.sample("free", dist.ImproperUniform(dist.constraints.real, (), (2,)))


def test_a_warm_start_on_a_flat_improper_prior_says_why_and_what_to_do():
    start = init_to_value(values={"free": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"does not depend on the latent values.*no mode.*proper priors.*"
                                         r"warm_start=None.*init_to_value"):
        AutoFlowGuide(flat_model, init_loc_fn=start).warm_start(method="laplace")
    guide = AutoFlowGuide(flat_model, init_loc_fn=start, warm_start="map")
    with pytest.raises(ValueError, match=r"does not depend on the latent values"):
        SVI(flat_model, guide, numpyro.optim.Adam(0.01), Trace_ELBO()).init(jax.random.PRNGKey(0))
