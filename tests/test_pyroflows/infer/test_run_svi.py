"""run_svi: NumPyro's SVI.run for Pyro (result fields, the non-finite stop and restore, Ctrl-C, the bar, arguments)."""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal

import pyroflows
from pyroflows.infer import SVIRunResult, run_svi

pytestmark = pytest.mark.usefixtures("fresh_param_store")

DATA = torch.linspace(-1.0, 3.0, 20) + 0.3


def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("n", x.shape[0]):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


def _failing(bad_step: int | None):
    """A model and an AutoNormal guide whose observation turns to +inf at step ``bad_step`` (the guide counts the
    steps: Trace_ELBO runs it once per step, before the model), and ``seen[k - 1]``: the guide's (loc, scale) at step
    ``k``, i.e. the parameters before step ``k``'s update."""
    calls, seen = [0], []

    def bad_model(x):
        if bad_step is not None and calls[0] >= bad_step:
            x = torch.full_like(x, float("inf"))
        model(x)

    auto = AutoNormal(bad_model)

    def guide(x):
        calls[0] += 1
        out = auto(x)
        seen.append((auto.locs.mu.detach().clone(), auto.scales.mu.detach().clone()))
        return out

    return bad_model, guide, auto, seen


def test_conjugate_normal_reaches_the_exact_posterior():
    svi = SVI(model, AutoNormal(model), pyro.optim.ClippedAdam({"lr": 0.1, "lrd": 0.99}), TraceMeanField_ELBO())
    result = run_svi(svi, DATA, num_steps=400, progress=False)
    assert isinstance(result, SVIRunResult) and SVIRunResult._fields == ("params", "state", "losses")
    n = DATA.shape[0]
    post_mean, post_sd = float(DATA.sum() / (n + 1)), (1.0 / (n + 1)) ** 0.5  # prior N(0, 1), unit noise
    assert float(result.params["AutoNormal.locs.mu"]) == pytest.approx(post_mean, abs=0.05)
    assert float(result.params["AutoNormal.scales.mu"]) == pytest.approx(post_sd, rel=0.1)  # constrained value
    assert result.losses.shape == (400,) and result.losses.dtype == torch.float64
    assert torch.isfinite(result.losses).all() and result.losses[-50:].mean() < result.losses[:10].mean()
    assert set(result.state) == {"AutoNormal.locs.mu", "AutoNormal.scales.mu"}
    assert not result.params["AutoNormal.locs.mu"].requires_grad
    # a second call goes on from where the first stopped
    again = run_svi(svi, DATA, num_steps=5, progress=False)
    assert again.losses.shape == (5,)
    assert float(again.params["AutoNormal.locs.mu"]) == pytest.approx(post_mean, abs=0.1)


def test_exported_from_the_package():
    assert pyroflows.run_svi is run_svi and "run_svi" in pyroflows.__all__ and "run_svi" in pyroflows.infer.__all__


def test_non_finite_loss_stops_and_restores_the_parameters_before_the_bad_step():
    bad_model, guide, auto, seen = _failing(bad_step=6)
    svi = SVI(bad_model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    with pytest.warns(RuntimeWarning) as record:
        result = run_svi(svi, DATA, num_steps=50, progress=False)
    message = str(record[0].message)
    assert "step 6" in message and "parameters are those before step 6" in message
    assert "learning rate" in message and "ClippedAdam" in message and "check the model" in message
    assert result.losses.shape == (5,) and torch.isfinite(result.losses).all()
    loc_before, scale_before = seen[5]  # what step 6 started from
    assert torch.equal(result.params["AutoNormal.locs.mu"], loc_before)
    assert torch.allclose(result.params["AutoNormal.scales.mu"], scale_before)
    # restored in place: the store and the guide module hold those values, not the NaNs of the bad update
    assert torch.equal(pyro.param("AutoNormal.locs.mu").detach(), loc_before)
    assert torch.equal(auto.locs.mu.detach(), loc_before)


def test_non_finite_first_loss_raises_naming_the_starting_point():
    bad_model, guide, _, _ = _failing(bad_step=1)
    svi = SVI(bad_model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    with pytest.raises(ValueError, match="first step.*starting point"):
        run_svi(svi, DATA, num_steps=10, progress=False)


def test_keyboard_interrupt_returns_the_completed_steps():
    _, guide, _, seen = _failing(bad_step=None)
    inner = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())

    class Interrupted:  # Ctrl-C after step 4's update was applied but before step() returned
        optim, calls = inner.optim, 0

        def step(self, *args, **kwargs):
            self.calls += 1
            loss = inner.step(*args, **kwargs)
            if self.calls == 4:
                raise KeyboardInterrupt
            return loss

    with pytest.warns(RuntimeWarning, match="KeyboardInterrupt.*step 4.*3 steps completed"):
        result = run_svi(Interrupted(), DATA, num_steps=20, progress=False)
    assert result.losses.shape == (3,)
    assert torch.equal(result.params["AutoNormal.locs.mu"], seen[3][0])  # step 4's update undone


def test_progress_false_prints_nothing_and_true_writes_a_bar_to_stderr(capsys):
    svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_svi(svi, DATA, num_steps=20, progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    run_svi(svi, DATA, num_steps=20, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "20/20" in captured.err and "init loss:" in captured.err and "avg. loss [20-20]" in captured.err


@pytest.mark.parametrize("num_steps", [0, -3, 2.5, True, "100", None])
def test_num_steps_must_be_a_positive_int(num_steps):
    svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    with pytest.raises(ValueError, match="num_steps must be a positive int"):
        run_svi(svi, DATA, num_steps=num_steps, progress=False)


def test_svi_must_have_a_step_method():
    with pytest.raises(TypeError, match=r"pyro\.infer\.SVI"):
        run_svi(model, DATA, num_steps=10, progress=False)
    with pytest.raises(TypeError, match="num_steps"):  # NumPyro's positional order is refused, not misread
        run_svi(SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.05}), Trace_ELBO()), DATA)
