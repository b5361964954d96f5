"""pyroflows.fit: a Gaussian fit reaches the exact MLE, flows improve held-out likelihood, early stopping restores the
best parameters, data errors name the fix, dequantization gives bits/dim, standardisation stays in data space and
saves, conditional flows learn a context-dependent mean, and a non-finite loss stops with the best parameters."""

from __future__ import annotations

import importlib
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

import pyroflows
from pyroflows import Flow, flows
from pyroflows.functional.affine import affine_scale
from pyroflows.infer import fit as fit_fn
from pyroflows.transforms.linear import ActNorm, DiagonalAffine, ReversePermutation

fit_module = importlib.import_module("pyroflows.infer.fit")  # the module (pyroflows.infer.fit is the function)


def _affine_values(t: DiagonalAffine) -> tuple[np.ndarray, np.ndarray]:
    return (t.head.shift.detach().double().numpy(), affine_scale(t.head.raw_scale).detach().double().numpy())


def _small_maf(d: int = 2, context_dim: int = 0) -> Flow:
    torch.manual_seed(0)
    return flows.MAF(d, context_dim=context_dim, num_transforms=2, hidden_dims=(16, 16))


def _moons(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper[:, None], np.stack([np.cos(t), np.sin(t)], 1), np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1))
    return x + 0.1 * rng.normal(size=(n, 2))


def _state(flow: Flow) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ============================================================================================ known answers
def test_gaussian_fit_reaches_the_exact_mle():
    """A diagonal affine flow is a diagonal Gaussian: its MLE is the sample mean and sd (ddof=0), and the final
    training NLL is the Gaussian NLL there: D/2 log 2π + Σ log sd + D/2."""
    rng = np.random.default_rng(1)
    x = rng.normal([1.0, -2.0, 0.5], [0.5, 2.0, 1.0], size=(400, 3))
    flow = Flow([DiagonalAffine(3)]).double()
    out, h = fit_fn(flow, x, batch_size=400, max_steps=800, lr=0.1, validation_fraction=0, progress=False)
    assert out is flow and h.stopped == "max_steps" and h.num_steps == 800 and len(h.train_loss) == 800
    mean, sd = _affine_values(flow.transforms[0])
    np.testing.assert_allclose(mean, x.mean(0), atol=1e-6)
    np.testing.assert_allclose(sd, x.std(0), rtol=1e-6)
    exact = 1.5 * math.log(2 * math.pi) + np.log(x.std(0)).sum() + 1.5
    assert h.train_loss[-1] == pytest.approx(exact, abs=1e-8)
    with torch.no_grad():
        assert float(-flow().log_prob(torch.as_tensor(x)).mean()) == pytest.approx(exact, abs=1e-8)
    assert h.best_val_loss is None and h.val_loss == [] and h.best_step == 800 and h.bits_per_dim is None
    assert "final parameters" in h.message


def test_loss_is_the_flows_own_log_prob():
    flow, x = _small_maf(), torch.as_tensor(_moons(50, 0), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(fit_module._log_prob(flow, x, None), flow().log_prob(x))


@pytest.mark.parametrize("recipe", ["MAF", "NSF"])
def test_fit_improves_held_out_likelihood(recipe):
    x, x_test = _moons(1000, 0), torch.as_tensor(_moons(1000, 1), dtype=torch.float32)
    torch.manual_seed(0)
    flow = getattr(flows, recipe)(2, num_transforms=2, hidden_dims=(16, 16))
    with torch.no_grad():
        before = float(flow().log_prob(x_test).mean())
    flow, h = fit_fn(flow, x, max_steps=300, lr=3e-3, progress=False)
    with torch.no_grad():
        after = float(flow().log_prob(x_test).mean())
    assert after > before + 0.5, (before, after)
    assert h.val_loss[0][0] == 0 and h.val_loss[-1][0] == 300 and h.best_val_loss < h.val_loss[0][1]
    assert h.best_val_loss == min(v for _, v in h.val_loss)


def test_early_stopping_restores_the_best_parameters():
    """Twenty training rows and a large flow overfit: the validation NLL turns up, training stops early, and the
    returned flow has exactly the best validation loss."""
    rng = np.random.default_rng(3)
    x, xv = rng.normal(size=(20, 2)), rng.normal(size=(200, 2))
    torch.manual_seed(0)
    flow = flows.MAF(2, num_transforms=3, hidden_dims=(64, 64))
    flow, h = fit_fn(flow, x, validation_data=xv, lr=1e-2, max_steps=3000, eval_every=5, patience=5, progress=False)
    assert h.stopped == "early_stopping" and h.num_steps < 3000
    assert h.best_step < h.num_steps and h.num_steps - h.best_step == 5 * 5
    assert h.best_val_loss == min(v for _, v in h.val_loss)
    assert h.train_loss[-1] < h.best_val_loss  # it did overfit
    with torch.no_grad():
        val = float(-flow().log_prob(torch.as_tensor(xv, dtype=torch.float32)).mean())
    assert val == pytest.approx(h.best_val_loss, rel=1e-6)
    assert "stopped early" in h.message and f"step {h.best_step}" in h.message


def test_budget_epochs_default_and_batch_order():
    x = np.random.default_rng(0).normal(size=(100, 2))
    flow = Flow([DiagonalAffine(2)])
    _, h = fit_fn(flow, x, epochs=3, batch_size=32, progress=False)  # 90 training rows: 2 full batches per epoch
    assert h.num_steps == 6 and h.stopped == "max_steps" and h.val_loss[-1][0] == 6
    _, h = fit_fn(Flow([DiagonalAffine(2)]), x, batch_size=500, progress=False, patience=None)
    assert h.num_steps == 1000 and [s for s, _ in h.val_loss] == list(range(0, 1001, 50))  # defaults
    # same seed, same split and batches: identical runs; another seed differs
    runs = [fit_fn(Flow([DiagonalAffine(2)]), x, batch_size=16, max_steps=20, seed=s, progress=False)[1].train_loss
            for s in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


# ============================================================================================ data checks
@pytest.mark.parametrize("kwargs, match", [
    ({"data": np.zeros((10, 3))}, r"data has 3 columns but the flow's input_dim is 2; .*input_dim=3"),
    ({"data": np.zeros(10)}, r"2-D array of shape \(N, 2\).*reshape\(-1, 1\)"),
    ({"data": np.where(np.arange(20)[:, None] % 7 == 3, np.nan, np.ones((20, 2)))},
     r"data has 3 rows with NaN or inf values \(the first is row 3\)"),
    ({"data": np.zeros((2, 2))}, r"data has 2 rows, too few.*at least 2 training rows plus 1 validation row"),
    ({"data": np.zeros((1, 2)), "validation_fraction": 0}, r"data has 1 rows, too few.*at least 2 training rows"),
    ({"context": np.zeros((10, 1))}, r"got context but the flow was built with context_dim=0"),
    ({"data": np.arange(20.0).reshape(10, 2) + 0.5, "dequantize": True}, r"integer-valued data.*data\[0, 0\] = 0.5"),
    ({"validation_fraction": 1.0}, r"validation_fraction must be in \[0, 1\)"),
    ({"max_steps": 5, "epochs": 2}, r"either max_steps= or epochs="),
    ({"validation_context": np.zeros((3, 1))}, r"validation_context= is only used with validation_data="),
    ({"validation_data": np.zeros((4, 1))}, r"validation_data has 1 columns"),
    ({"data": np.array([["a", "b"]])}, r"numeric array"),
])
def test_data_errors_name_the_fix(kwargs, match):
    kwargs = {"data": np.zeros((10, 2)), **kwargs}
    err = TypeError if "numeric" in match else ValueError
    with pytest.raises(err, match=match):
        fit_fn(Flow([DiagonalAffine(2)]), progress=False, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({}, r"context_dim=1: pass context= \(an array of shape \(10, 1\)"),
    ({"context": np.zeros((9, 1))}, r"context has 9 rows but data has 10: pass one context row per data row"),
    ({"context": np.zeros((10, 2))}, r"context has 2 columns but the flow's context_dim is 1"),
    ({"context": np.full((10, 1), np.inf)}, r"context has 10 rows with NaN or inf"),
    ({"context": np.zeros((10, 1)), "validation_data": np.zeros((4, 2))}, r"pass validation_context="),
])
def test_context_errors_name_the_fix(kwargs, match):
    flow = flows.MAF(2, context_dim=1, num_transforms=1, hidden_dims=(8,))
    with pytest.raises(ValueError, match=match):
        fit_fn(flow, np.zeros((10, 2)), progress=False, **kwargs)


def test_not_a_flow_or_nothing_to_fit():
    with pytest.raises(TypeError, match="fit takes a pyroflows Flow"):
        fit_fn(DiagonalAffine(2), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit_fn(Flow([ReversePermutation(2)]), np.zeros((10, 2)))


# ============================================================================================ dequantization
def test_dequantization_bits_per_dim():
    """Counts from Binomial(10, 0.3)²: bits/dim is the validation NLL over D ln 2, and it cannot beat the entropy of
    the discrete distribution (the dequantized likelihood lower-bounds the discrete one)."""
    rng = np.random.default_rng(1)
    x, xv = rng.binomial(10, 0.3, size=(2000, 2)), rng.binomial(10, 0.3, size=(4000, 2))
    entropy_bits = stats.binom(10, 0.3).entropy() / math.log(2)
    flow = flows.Elementwise(2, count_bins=16, bound=3.0)
    flow, h = fit_fn(flow, x, validation_data=xv, dequantize=True, standardize=True, max_steps=400, lr=3e-3,
                     progress=False)
    assert h.bits_per_dim == pytest.approx(h.best_val_loss / (2 * math.log(2)), rel=1e-12)
    assert entropy_bits - 0.03 < h.bits_per_dim < entropy_bits + 0.1, (h.bits_per_dim, entropy_bits)
    # without validation: bits/dim from the training rows (a Gaussian fit of the counts here)
    _, h0 = fit_fn(Flow([DiagonalAffine(2)]), x, dequantize=True, standardize=True, max_steps=50,
                   validation_fraction=0, progress=False)
    assert h0.bits_per_dim is not None and h0.bits_per_dim > entropy_bits - 0.1


# ============================================================================================ standardisation
def test_standardize_fits_far_from_unit_scale_and_stays_in_data_space(tmp_path):
    rng = np.random.default_rng(1)
    mean, cov = np.array([1000.0, -500.0]), np.array([[2500.0, 1500.0], [1500.0, 2500.0]])
    x, xt = rng.multivariate_normal(mean, cov, size=1200), rng.multivariate_normal(mean, cov, size=1000)
    exact = torch.distributions.MultivariateNormal(torch.tensor(mean), torch.tensor(cov)).log_prob(torch.tensor(xt))
    xt = torch.as_tensor(xt, dtype=torch.float32)

    inner = _small_maf()
    flow, h = fit_fn(inner, x, standardize=True, max_steps=300, progress=False)
    assert type(flow) is Flow and flow is not inner and len(flow.transforms) == 3
    assert flow.transforms[0] is inner.transforms[0]  # the same modules, trained in place
    assert isinstance(flow.transforms[-1], DiagonalAffine)
    with torch.no_grad():
        lp = flow().log_prob(xt).double()
    assert (lp - exact).abs().mean() < 0.15
    assert abs(float(lp.mean() - exact.mean())) < 0.1

    _, h_raw = fit_fn(_small_maf(), x, max_steps=300, progress=False)
    assert h_raw.best_val_loss > h.best_val_loss + 20  # without standardisation the same budget gets nowhere

    path = tmp_path / "flow.pt"
    pyroflows.save(flow, path)
    loaded = pyroflows.load(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded().log_prob(xt), flow().log_prob(xt), rtol=0, atol=0)
    params = pyroflows.export_params(flow)
    assert "transforms.2.head.shift" in params


def test_standardize_initialises_the_affine_at_the_training_statistics():
    x = np.random.default_rng(0).normal([5.0, -3.0], [10.0, 0.1], size=(300, 2))
    flow, _ = fit_fn(Flow([DiagonalAffine(2)]).double(), x, standardize=True, validation_fraction=0, max_steps=1,
                     lr=1e-12, progress=False)
    mean, sd = _affine_values(flow.transforms[-1])
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-9)
    np.testing.assert_allclose(sd, x.std(0), rtol=1e-6)
    # with dequantization the statistics are those of x + u: mean + 1/2, variance + 1/12
    counts = np.random.default_rng(0).poisson(20.0, size=(300, 2))
    flow, _ = fit_fn(Flow([DiagonalAffine(2)]).double(), counts, standardize=True, dequantize=True,
                     validation_fraction=0, max_steps=1, lr=1e-12, progress=False)
    mean, sd = _affine_values(flow.transforms[-1])
    np.testing.assert_allclose(mean, counts.mean(0) + 0.5, rtol=1e-9)
    np.testing.assert_allclose(sd, np.sqrt(counts.var(0) + 1 / 12), rtol=1e-6)


def test_actnorm_is_initialised_on_training_rows():
    x = np.random.default_rng(0).normal([5.0, -3.0], [2.0, 0.5], size=(300, 2))
    flow = Flow([DiagonalAffine(2), ActNorm(2)])
    fit_fn(flow, x, validation_fraction=0, max_steps=1, lr=1e-12, progress=False)
    act = flow.transforms[1]
    assert int(act.initialized) == 1
    np.testing.assert_allclose(act.head.loc.detach().numpy(), x.mean(0), rtol=1e-4)
    np.testing.assert_allclose(act.head.log_scale.detach().exp().numpy(), x.std(0), rtol=1e-4)


# ============================================================================================ conditional
def test_conditional_flow_learns_a_context_dependent_mean():
    rng = np.random.default_rng(1)
    c = rng.uniform(-2, 2, size=(2000, 1))
    x = 2 * c + rng.normal(size=(2000, 1))
    flow, h = fit_fn(_small_maf(1, context_dim=1), x, context=c, max_steps=500, lr=5e-3, progress=False)
    with torch.no_grad():
        for cv in (-1.5, 0.0, 1.0):
            s = flow(torch.full((4000, 1), cv)).sample()
            assert float(s.mean()) == pytest.approx(2 * cv, abs=0.15)
            assert float(s.std()) == pytest.approx(1.0, abs=0.1)
    assert h.best_val_loss < 0.5 * math.log(2 * math.pi) + 0.5 + 0.1


def test_conditional_with_explicit_validation_set():
    rng = np.random.default_rng(2)
    c, cv = rng.normal(size=(100, 1)), rng.normal(size=(30, 1))
    x, xv = c + rng.normal(size=(100, 1)), cv + rng.normal(size=(30, 1))
    flow, h = fit_fn(_small_maf(1, context_dim=1), x, context=c, validation_data=xv, validation_context=cv,
                     max_steps=20, eval_every=10, progress=False)
    with torch.no_grad():
        val = float(-flow(torch.as_tensor(cv, dtype=torch.float32)).log_prob(torch.as_tensor(xv,
                                                                                          dtype=torch.float32)).mean())
    assert val == pytest.approx(h.best_val_loss, rel=1e-6) and [s for s, _ in h.val_loss] == [0, 10, 20]


# ============================================================================================ failures
def test_nan_loss_stops_and_keeps_the_best_parameters():
    x = np.random.default_rng(1).normal(size=(300, 2))
    flow = _small_maf()
    initial = _state(flow)
    with pytest.warns(RuntimeWarning, match=r"not finite at step 1.*Lower the learning rate \(lr=1e\+06\)"):
        flow, h = fit_fn(flow, x, lr=1e6, batch_size=64, progress=False)
    assert h.stopped == "nan" and h.num_steps == 1 and not math.isfinite(h.train_loss[-1])
    assert h.best_step == 0 and _same_state(_state(flow), initial)  # the best (step-0) parameters are back
    assert all(torch.isfinite(p).all() for p in flow.parameters())


def test_nan_without_validation_keeps_the_last_parameters_with_a_finite_loss(monkeypatch):
    """A NaN loss at step 7 (injected): the parameters after 6 updates are kept, exactly those of a 6-step run."""
    x = np.random.default_rng(1).normal(size=(300, 2))
    reference, _ = fit_fn(_small_maf(), x, validation_fraction=0, max_steps=6, batch_size=64, progress=False)
    expected = _state(reference)
    calls = {"n": 0}
    real = fit_module._log_prob

    def poisoned(flow, xb, cb):
        calls["n"] += 1
        lp = real(flow, xb, cb)
        return lp * float("nan") if calls["n"] == 8 else lp

    monkeypatch.setattr(fit_module, "_log_prob", poisoned)
    with pytest.warns(RuntimeWarning, match="not finite at step 7"):
        flow, h = fit_fn(_small_maf(), x, validation_fraction=0, max_steps=50, batch_size=64, progress=False)
    assert h.stopped == "nan" and h.num_steps == 7 and h.best_step == 6 and len(h.train_loss) == 8
    assert _same_state(_state(flow), expected)


def test_keyboard_interrupt_keeps_the_best_parameters(monkeypatch):
    x = np.random.default_rng(1).normal(size=(300, 2))
    calls = {"n": 0}
    real = fit_module._log_prob

    def interrupted(flow, xb, cb):
        calls["n"] += 1
        if calls["n"] == 40:
            raise KeyboardInterrupt
        return real(flow, xb, cb)

    monkeypatch.setattr(fit_module, "_log_prob", interrupted)
    flow, h = fit_fn(_small_maf(), x, max_steps=100, eval_every=10, progress=False)
    assert h.stopped == "interrupted" and "interrupted" in h.message
    with torch.no_grad():
        val = [v for s, v in h.val_loss if s == h.best_step][0]
    assert val == h.best_val_loss


# ============================================================================================ misc
def test_progress_bar_shows_the_running_loss(capsys):
    fit_fn(Flow([DiagonalAffine(2)]), np.random.default_rng(0).normal(size=(100, 2)), max_steps=60, progress=True)
    err = capsys.readouterr().err
    assert "fit" in err and "loss=" in err and "val=" in err


def test_weight_decay_spares_the_standardisation_layer():
    x = np.random.default_rng(0).normal(3.0, 1.0, size=(200, 2))
    kw = {"clip_norm": None, "lr": 0.05, "max_steps": 300, "device": "cpu", "validation_fraction": 0, "progress": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain, _ = fit_fn(Flow([DiagonalAffine(2)]), x, **kw)
        decayed, _ = fit_fn(Flow([DiagonalAffine(2)]), x, weight_decay=0.5, **kw)
        standardized, _ = fit_fn(Flow([DiagonalAffine(2)]), x, weight_decay=0.5, standardize=True, **kw)
    np.testing.assert_allclose(_affine_values(plain.transforms[0])[0], x.mean(0), atol=0.02)
    assert (_affine_values(decayed.transforms[0])[0] < x.mean(0) - 0.3).all()  # the shift is pulled towards 0 ...
    np.testing.assert_allclose(_affine_values(standardized.transforms[1])[0], x.mean(0), atol=0.02)  # ... not here


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_gpu():
    x = _moons(2000, 0)
    flow, h = fit_fn(_small_maf(), x, max_steps=200, device="cuda", dequantize=False, standardize=True,
                     progress=False)
    assert next(flow.parameters()).is_cuda and h.best_val_loss < h.val_loss[0][1]
    with torch.no_grad():
        assert torch.isfinite(flow().log_prob(torch.as_tensor(x, dtype=torch.float32, device="cuda"))).all()


# ============================================================================================ standardisation limits
def test_standardize_refuses_what_the_data_space_affine_cannot_hold():
    """Before: a column with sd 1e-4 was silently clamped to the affine's floor 1e-3 (a wrong density), a constant
    column silently got sd 1, and float32 data at offset 1e8 were cast to float32 before standardising (all rows one
    value, a meaningless NLL). Now each is refused with the fix named."""
    x = np.random.default_rng(0).normal(size=(500, 2))
    x = (x - x.mean(0)) / x.std(0)
    kw = {"max_steps": 2, "validation_fraction": 0, "progress": False}
    with pytest.raises(ValueError, match=r"column 1 of data has sd 0.0001.*floor 0.001.*rescale the column "
                                         r"\(multiply it by 10000"):
        fit_fn(Flow([DiagonalAffine(2)]), x * [1.0, 1e-4], standardize=True, **kw)
    with pytest.raises(ValueError, match=r"column 0 of data is constant \(every training row holds 3\).*drop"):
        fit_fn(Flow([DiagonalAffine(2)]), np.c_[np.full(500, 3.0), x[:, 1]], standardize=True, **kw)
    with pytest.raises(ValueError, match=r"column 0 of data has mean 1e\+08 and sd 1.*flow.double\(\)"):
        fit_fn(Flow([DiagonalAffine(2)]), x + [1e8, 0.0], standardize=True, **kw)
    flow, _ = fit_fn(Flow([DiagonalAffine(2)]), x * [1.0, 2e-3], standardize=True, **kw)  # above the floor: fits
    assert isinstance(flow.transforms[-1], DiagonalAffine)


def test_standardize_in_float64_fits_data_far_from_the_origin():
    """Offset 1e8, sd 1, a float64 flow: standardised in float64, the reported NLL is that of the data, and the
    returned flow's log_prob agrees with it and with the true density."""
    rng = np.random.default_rng(1)
    x, xv = rng.normal(size=(2000, 2)) + 1e8, rng.normal(size=(500, 2)) + 1e8
    flow, h = fit_fn(Flow([DiagonalAffine(2)]).double(), x, validation_data=xv, standardize=True, max_steps=200,
                     lr=1e-2, progress=False)
    truth = -stats.norm(1e8, 1.0).logpdf(xv).sum(1).mean()
    with torch.no_grad():
        nll = float(-flow().log_prob(torch.as_tensor(xv)).mean())
    assert nll == pytest.approx(h.best_val_loss, rel=1e-9)
    assert h.best_val_loss == pytest.approx(truth, abs=0.02)


# ============================================================================================ data types
def test_integer_data_without_dequantize_warn_and_any_dtype_is_converted():
    """Integer data fitted as if continuous (a density piling up on the integers): a warning naming dequantize=True;
    int64 and float64 tensors are converted to the flow's float32."""
    counts = np.random.default_rng(0).poisson(4.0, size=(300, 2))
    with pytest.warns(UserWarning, match=r"only integer values.*dequantize=True"):
        fit_fn(Flow([DiagonalAffine(2)]), counts, max_steps=2, progress=False)
    with pytest.warns(UserWarning, match="dequantize=True"):
        fit_fn(Flow([DiagonalAffine(2)]), counts.astype(np.float64), max_steps=2, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, h = fit_fn(Flow([DiagonalAffine(2)]), torch.as_tensor(counts), dequantize=True, max_steps=2,
                      progress=False)
        _, h64 = fit_fn(_small_maf(), torch.as_tensor(_moons(300, 0), dtype=torch.float64), max_steps=2,
                        progress=False)
    assert math.isfinite(h.best_val_loss) and math.isfinite(h64.best_val_loss)


# ======================================================================================= optimizer, scheduler, callback
def test_optimizer_factory_replaces_adam():
    x = np.random.default_rng(1).normal([1.0, -2.0], [0.5, 2.0], size=(200, 2))
    kw = {"batch_size": 50, "max_steps": 40, "validation_fraction": 0, "progress": False}
    _, h_default = fit_fn(Flow([DiagonalAffine(2)]), x, lr=0.05, **kw)
    _, h_same = fit_fn(Flow([DiagonalAffine(2)]), x, optimizer=lambda p: torch.optim.Adam(p, lr=0.05), **kw)
    assert h_same.train_loss == h_default.train_loss  # the factory's optimizer takes the steps, nothing else
    made = []

    def sgd(groups):
        made.append(torch.optim.SGD(groups, lr=0.05, weight_decay=0.1))
        return made[-1]

    flow, h = fit_fn(Flow([DiagonalAffine(2)]), x, optimizer=sgd, standardize=True, **kw)
    assert len(made) == 1 and [g["weight_decay"] for g in made[0].param_groups] == [0.1, 0.0]  # affine spared
    assert h.train_loss[-1] < h.train_loss[0] and h.train_loss != h_default.train_loss
    with pytest.raises(ValueError, match="with optimizer= set the learning rate"):
        fit_fn(Flow([DiagonalAffine(2)]), x, optimizer=sgd, lr=0.1, **kw)
    with pytest.raises(TypeError, match=r"optimizer must be a factory .*lambda params: torch.optim.AdamW"):
        fit_fn(Flow([DiagonalAffine(2)]), x, optimizer=torch.optim.SGD(Flow([DiagonalAffine(2)]).parameters(), 0.1),
               **kw)
    with pytest.raises(TypeError, match="returned list"):
        fit_fn(Flow([DiagonalAffine(2)]), x, optimizer=lambda p: list(p), **kw)


def test_scheduler_factory_is_stepped_after_every_step():
    x = np.random.default_rng(1).normal(size=(200, 2))
    kw = {"batch_size": 50, "validation_fraction": 0, "progress": False, "lr": 0.05}
    five, _ = fit_fn(Flow([DiagonalAffine(2)]), x, max_steps=5, **kw)
    frozen, _ = fit_fn(Flow([DiagonalAffine(2)]), x, max_steps=20, **kw,
                       scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 5 else 0.0))
    assert _same_state(_state(frozen), _state(five))  # learning rate 0 after five steps
    plateaus = []

    def plateau(opt):
        plateaus.append(torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5))
        return plateaus[-1]

    fit_fn(Flow([DiagonalAffine(2)]), x, max_steps=300, eval_every=5, patience=None, scheduler=plateau,
           **{**kw, "validation_fraction": 0.2})
    assert plateaus[0].optimizer.param_groups[0]["lr"] < 0.05  # stepped with the validation loss, and reduced


def test_callback_sees_each_evaluation_and_can_stop():
    rng = np.random.default_rng(2)
    x, xv = rng.normal(5.0, 2.0, size=(300, 2)), rng.normal(5.0, 2.0, size=(100, 2))
    seen = []

    def callback(step, loss, flow):
        with torch.no_grad():
            seen.append((step, loss, float(-flow().log_prob(torch.as_tensor(xv, dtype=torch.float32)).mean())))
        return step >= 30

    flow, h = fit_fn(_small_maf(), x, validation_data=xv, standardize=True, eval_every=10, max_steps=100,
                     callback=callback, progress=False)
    assert h.stopped == "callback" and h.num_steps == 30 and "stopped by the callback at step 30" in h.message
    assert [s for s, _, _ in seen] == [10, 20, 30] and [v for _, v, _ in seen] == [v for _, v in h.val_loss[1:]]
    for _, loss, own in seen:  # the flow handed over is the data-space flow fit would return at that step
        assert own == pytest.approx(loss, rel=1e-5)
    without_val = []
    fit_fn(Flow([DiagonalAffine(2)]), x, validation_fraction=0, eval_every=7, max_steps=20, progress=False,
           callback=lambda step, loss, flow: without_val.append((step, loss)))
    _, h0 = fit_fn(Flow([DiagonalAffine(2)]), x, validation_fraction=0, eval_every=7, max_steps=20, progress=False)
    assert without_val == [(7, pytest.approx(np.mean(h0.train_loss[:7]))), (14, pytest.approx(np.mean(
        h0.train_loss[7:14]))), (20, pytest.approx(np.mean(h0.train_loss[14:])))]
    with pytest.raises(TypeError, match="callback must be a function"):
        fit_fn(Flow([DiagonalAffine(2)]), x, callback=5, progress=False)
