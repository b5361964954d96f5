"""numpyroflows.fit: the same known answers as tests/test_pyroflows/infer/test_fit.py (exact Gaussian MLE, held-out
likelihood, early stopping, data errors, bits/dim, standardisation, conditional mean, NaN stop), plus: no recompilation
across fits of the same structure, the same keywords and defaults as pyroflows.fit, and the same training trajectory as
pyroflows.fit from the same parameters and seed (float64)."""

from __future__ import annotations

import importlib
import inspect
import math

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
import jax.numpy as jnp  # noqa: E402
from scipy import stats  # noqa: E402

import numpyroflows  # noqa: E402
from numpyroflows import Flow, flows  # noqa: E402
from numpyroflows.functional.affine import affine_scale  # noqa: E402
from numpyroflows.infer import fit as fit_fn  # noqa: E402
from numpyroflows.transforms.linear import ActNorm, DiagonalAffine, ReversePermutation  # noqa: E402

fit_module = importlib.import_module("numpyroflows.infer.fit")  # the module (numpyroflows.infer.fit is the function)
KEY = jax.random.PRNGKey(0)


def _affine_values(flow: Flow, i: int) -> tuple[np.ndarray, np.ndarray]:
    p = flow.params
    return (np.asarray(p[f"transforms.{i}.head.shift"], np.float64),
            np.asarray(affine_scale(p[f"transforms.{i}.head.raw_scale"]), np.float64))


def _small_maf(d: int = 2, context_dim: int = 0) -> Flow:
    """A float32 MAF, whether x64 is on (as in the whole suite) or off."""
    return flows.MAF(d, context_dim=context_dim, num_transforms=2, hidden_dims=(16, 16), key=KEY, dtype=jnp.float32)


def _moons(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    upper = rng.random(n) < 0.5
    x = np.where(upper[:, None], np.stack([np.cos(t), np.sin(t)], 1), np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1))
    return x + 0.1 * rng.normal(size=(n, 2))


def _mean_log_prob(flow: Flow, x: np.ndarray, c: np.ndarray | None = None) -> float:
    dtype = next(iter(flow.params.values())).dtype
    ctx = None if c is None else jnp.asarray(c, dtype)
    return float(jnp.mean(flow(ctx).log_prob(jnp.asarray(x, dtype))))


def _same_params(a: Flow, b: Flow) -> bool:
    pa, pb = a.params, b.params
    return pa.keys() == pb.keys() and all(bool(jnp.array_equal(pa[k], pb[k])) for k in pa)


# ============================================================================================ known answers
def test_gaussian_fit_reaches_the_exact_mle():
    rng = np.random.default_rng(1)
    x = rng.normal([1.0, -2.0, 0.5], [0.5, 2.0, 1.0], size=(400, 3))
    with jax.enable_x64(True):
        flow = Flow([DiagonalAffine(3, dtype=jnp.float64)])
        out, h = fit_fn(flow, x, batch_size=400, max_steps=800, lr=0.1, validation_fraction=0, progress=False)
        mean, sd = _affine_values(out, 0)
        exact = 1.5 * math.log(2 * math.pi) + np.log(x.std(0)).sum() + 1.5
        final = -_mean_log_prob(out, x)
    assert h.stopped == "max_steps" and h.num_steps == 800 and len(h.train_loss) == 800
    np.testing.assert_allclose(mean, x.mean(0), atol=1e-6)
    np.testing.assert_allclose(sd, x.std(0), rtol=1e-6)
    assert h.train_loss[-1] == pytest.approx(exact, abs=1e-8)
    assert final == pytest.approx(exact, abs=1e-8)
    assert h.best_val_loss is None and h.val_loss == [] and h.best_step == 800 and h.bits_per_dim is None


def test_fit_improves_held_out_likelihood():
    """(Splines are trained in the dequantization test; tests/test_pyroflows/infer/test_fit.py also fits an NSF
    here.)"""
    x, x_test = _moons(1000, 0), _moons(1000, 1)
    flow = _small_maf()
    before = _mean_log_prob(flow, x_test)
    flow, h = fit_fn(flow, x, max_steps=300, lr=3e-3, progress=False)
    after = _mean_log_prob(flow, x_test)
    assert after > before + 0.5, (before, after)
    assert h.val_loss[0][0] == 0 and h.val_loss[-1][0] == 300 and h.best_val_loss < h.val_loss[0][1]
    assert h.best_val_loss == min(v for _, v in h.val_loss)


def test_early_stopping_restores_the_best_parameters():
    rng = np.random.default_rng(3)
    x, xv = rng.normal(size=(20, 2)), rng.normal(size=(200, 2))
    flow = flows.MAF(2, num_transforms=3, hidden_dims=(64, 64), key=KEY)
    flow, h = fit_fn(flow, x, validation_data=xv, lr=1e-2, max_steps=3000, eval_every=5, patience=5, progress=False)
    assert h.stopped == "early_stopping" and h.num_steps < 3000
    assert h.best_step < h.num_steps and h.num_steps - h.best_step == 5 * 5
    assert h.best_val_loss == min(v for _, v in h.val_loss)
    assert h.train_loss[-1] < h.best_val_loss
    assert -_mean_log_prob(flow, xv) == pytest.approx(h.best_val_loss, rel=1e-5)


def test_budget_epochs_default_and_no_recompilation():
    x = np.random.default_rng(0).normal(size=(100, 2))
    _, h = fit_fn(Flow([DiagonalAffine(2)]), x, epochs=3, batch_size=32, device="cpu", progress=False)
    assert h.num_steps == 6 and h.stopped == "max_steps" and h.val_loss[-1][0] == 6
    _, h = fit_fn(Flow([DiagonalAffine(2)]), x, batch_size=500, progress=False, patience=None)
    assert h.num_steps == 1000 and [s for s, _ in h.val_loss] == list(range(0, 1001, 50))
    runs = [fit_fn(Flow([DiagonalAffine(2)]), x, batch_size=16, max_steps=23, eval_every=10, seed=s,
                   progress=False)[1].train_loss for s in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    # chunks of 10, 10 and 3 steps and three fits ran on one compiled training loop and one compiled evaluation
    sizes = fit_module._train_chunk._cache_size(), fit_module._mean_nll._cache_size()
    fit_fn(Flow([DiagonalAffine(2)]), x + 1.0, batch_size=16, max_steps=37, eval_every=10, lr=0.1, seed=5,
           progress=False)
    assert (fit_module._train_chunk._cache_size(), fit_module._mean_nll._cache_size()) == sizes


# ============================================================================================ data checks
@pytest.mark.parametrize("kwargs, match", [
    ({"data": np.zeros((10, 3))}, r"data has 3 columns but the flow's input_dim is 2; .*input_dim=3"),
    ({"data": np.zeros(10)}, r"2-D array of shape \(N, 2\).*reshape\(-1, 1\)"),
    ({"data": np.where(np.arange(20)[:, None] % 7 == 3, np.nan, np.ones((20, 2)))},
     r"data has 3 rows with NaN or inf values \(the first is row 3\)"),
    ({"data": np.zeros((2, 2))}, r"data has 2 rows, too few.*at least 2 training rows plus 1 validation row"),
    ({"context": np.zeros((10, 1))}, r"got context but the flow was built with context_dim=0"),
    ({"data": np.arange(20.0).reshape(10, 2) + 0.5, "dequantize": True}, r"integer-valued data.*data\[0, 0\] = 0.5"),
    ({"max_steps": 5, "epochs": 2}, r"either max_steps= or epochs="),
    ({"device": "no-such-platform"}, r"device='no-such-platform' is not available"),
])
def test_data_errors_name_the_fix(kwargs, match):
    kwargs = {"data": np.zeros((10, 2)), **kwargs}
    with pytest.raises(ValueError, match=match):
        fit_fn(Flow([DiagonalAffine(2)]), progress=False, **kwargs)


def test_not_a_flow_or_nothing_to_fit():
    with pytest.raises(TypeError, match="fit takes a numpyroflows Flow"):
        fit_fn(DiagonalAffine(2), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit_fn(Flow([ReversePermutation(2)]), np.zeros((10, 2)))


@pytest.mark.parametrize("kwargs, match", [
    ({}, r"context_dim=1: pass context= \(an array of shape \(10, 1\)"),
    ({"context": jnp.zeros((9, 1))}, r"context has 9 rows but data has 10: pass one context row per data row"),
])
def test_context_errors_name_the_fix(kwargs, match):
    flow = flows.MAF(2, context_dim=1, num_transforms=1, hidden_dims=(8,), key=KEY)
    with pytest.raises(ValueError, match=match):
        fit_fn(flow, jnp.zeros((10, 2)), progress=False, **kwargs)


# ============================================================================================ dequantization
def test_dequantization_bits_per_dim():
    rng = np.random.default_rng(1)
    x, xv = rng.binomial(10, 0.3, size=(2000, 2)), rng.binomial(10, 0.3, size=(4000, 2))
    entropy_bits = stats.binom(10, 0.3).entropy() / math.log(2)
    flow = flows.Elementwise(2, count_bins=16, bound=3.0, key=KEY)
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
    x, xt = rng.multivariate_normal(mean, cov, size=1000), rng.multivariate_normal(mean, cov, size=1000)
    exact = stats.multivariate_normal(mean, cov).logpdf(xt)

    inner = _small_maf()
    flow, h = fit_fn(inner, x, standardize=True, max_steps=300, progress=False)
    assert type(flow) is Flow and len(flow.transforms) == 3 and isinstance(flow.transforms[-1], DiagonalAffine)
    lp = np.asarray(flow().log_prob(jnp.asarray(xt, jnp.float32)), np.float64)
    assert np.abs(lp - exact).mean() < 0.15
    assert abs(lp.mean() - exact.mean()) < 0.1

    _, h_raw = fit_fn(_small_maf(), x, max_steps=300, progress=False)
    assert h_raw.best_val_loss > h.best_val_loss + 10

    path = tmp_path / "flow.npz"
    numpyroflows.save(flow, path)
    loaded = numpyroflows.load(path)
    np.testing.assert_array_equal(np.asarray(loaded().log_prob(jnp.asarray(xt, jnp.float32))), lp.astype(np.float32))
    assert "transforms.2.head.shift" in numpyroflows.export_params(flow)


def test_standardize_initialises_the_affine_and_actnorm_at_the_training_statistics():
    x = np.random.default_rng(0).normal([5.0, -3.0], [10.0, 0.1], size=(300, 2))
    flow, _ = fit_fn(Flow([DiagonalAffine(2)]), x, standardize=True, validation_fraction=0, max_steps=1, lr=1e-12,
                     progress=False)
    mean, sd = _affine_values(flow, 1)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sd, x.std(0), rtol=1e-5)
    flow, _ = fit_fn(Flow([DiagonalAffine(2), ActNorm(2)]), x, validation_fraction=0, max_steps=1, lr=1e-12,
                     progress=False)
    p = flow.params
    assert float(p["transforms.1.initialized"]) == 1.0
    np.testing.assert_allclose(np.asarray(p["transforms.1.head.loc"]), x.mean(0), rtol=1e-4)
    np.testing.assert_allclose(np.exp(np.asarray(p["transforms.1.head.log_scale"])), x.std(0), rtol=1e-4)


# ============================================================================================ conditional
def test_conditional_flow_learns_a_context_dependent_mean():
    rng = np.random.default_rng(1)
    c = rng.uniform(-2, 2, size=(2000, 1))
    x = 2 * c + rng.normal(size=(2000, 1))
    flow, h = fit_fn(_small_maf(1, context_dim=1), x, context=c, max_steps=500, lr=5e-3, progress=False)
    for i, cv in enumerate((-1.5, 0.0, 1.0)):
        dtype = next(iter(flow.params.values())).dtype
        s = np.asarray(flow(jnp.full((4000, 1), cv, dtype)).sample(jax.random.PRNGKey(i)))
        assert s.mean() == pytest.approx(2 * cv, abs=0.15)
        assert s.std() == pytest.approx(1.0, abs=0.1)
    assert h.best_val_loss < 0.5 * math.log(2 * math.pi) + 0.5 + 0.1


# ============================================================================================ failures
def test_nan_loss_stops_and_keeps_the_best_parameters():
    x = np.random.default_rng(1).normal(size=(1000, 2))  # the size of _moons(1000): the same compiled code
    flow0 = _small_maf()
    with pytest.warns(RuntimeWarning, match=r"not finite at step 1.*Lower the learning rate \(lr=1e\+06\)"):
        flow, h = fit_fn(flow0, x, lr=1e6, progress=False)
    assert h.stopped == "nan" and h.num_steps == 1 and not math.isfinite(h.train_loss[-1]) and len(h.train_loss) == 2
    assert h.best_step == 0 and _same_params(flow, flow0)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in flow.params.values())


def test_nan_without_validation_keeps_the_last_parameters_with_a_finite_loss():
    """Without validation the kept parameters are the last ones whose training loss was finite: exactly those of a
    run stopped by its budget at ``best_step``."""
    x = np.random.default_rng(1).normal(size=(1000, 2))
    with pytest.warns(RuntimeWarning, match="not finite"):
        flow, h = fit_fn(_small_maf(), x, lr=30.0, validation_fraction=0, progress=False)
    assert h.stopped == "nan" and h.best_step in (h.num_steps, h.num_steps - 1)
    assert math.isfinite(h.train_loss[h.best_step])
    reference, _ = fit_fn(_small_maf(), x, lr=30.0, validation_fraction=0, max_steps=h.best_step,
                          progress=False) if h.best_step else (_small_maf(), None)
    assert _same_params(flow, reference)


def test_keyboard_interrupt_keeps_the_best_parameters(monkeypatch):
    x = np.random.default_rng(1).normal(size=(100, 2)) + 3.0
    real, calls = fit_module._Batches.next, {"n": 0}

    def interrupted(self, steps):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, steps)

    monkeypatch.setattr(fit_module._Batches, "next", interrupted)
    flow, h = fit_fn(Flow([DiagonalAffine(2)]), x, max_steps=100, eval_every=10, lr=0.05, progress=False)
    assert h.stopped == "interrupted" and h.num_steps == 30 and "interrupted at step 30" in h.message
    assert [s for s, _ in h.val_loss] == [0, 10, 20, 30] and h.best_val_loss == min(v for _, v in h.val_loss)
    val = [v for s, v in h.val_loss if s == h.best_step][0]
    assert -_mean_log_prob(flow, x[np.random.default_rng(0).permutation(100)[90:]]) == pytest.approx(val, rel=1e-5)


# ============================================================================================ parity with pyroflows
def test_same_keywords_and_defaults_as_pyroflows():
    pyroflows = pytest.importorskip("pyroflows", reason="the parity check imports pyroflows (torch)")
    ours = inspect.signature(numpyroflows.fit).parameters
    theirs = inspect.signature(pyroflows.fit).parameters
    assert list(ours) == list(theirs)
    assert {k: (p.default, p.kind) for k, p in ours.items()} == {k: (p.default, p.kind) for k, p in theirs.items()}
    assert [f for f in numpyroflows.FitHistory.__dataclass_fields__] == \
        [f for f in pyroflows.FitHistory.__dataclass_fields__]


def test_same_trajectory_as_pyroflows():
    """From the same parameters, data and seed (float64), both packages take the same batches and the same AdamW
    steps with the same clipping, standardisation and context: losses and fitted parameters agree to round-off."""
    pyroflows = pytest.importorskip("pyroflows", reason="the parity check imports pyroflows (torch)")
    import torch

    rng = np.random.default_rng(0)
    x, c = rng.normal([3.0, -1.0], [2.0, 0.5], size=(300, 2)), rng.normal(size=(300, 1))
    torch.manual_seed(0)
    tflow = pyroflows.flows.MAF(2, context_dim=1, num_transforms=2, hidden_dims=(8, 8)).double()
    kw = {"context": c, "batch_size": 64, "max_steps": 60, "eval_every": 20, "standardize": True,
          "weight_decay": 0.01, "lr": 1e-2, "clip_norm": 1.0, "progress": False}
    with jax.enable_x64(True):
        jflow = numpyroflows.import_params(flows.MAF(2, context_dim=1, num_transforms=2, hidden_dims=(8, 8)),
                                           pyroflows.export_params(tflow))
        jout, jh = fit_fn(jflow, x, **kw)
        jparams = numpyroflows.export_params(jout)
    tout, th = pyroflows.fit(tflow, x, **kw)
    np.testing.assert_allclose(jh.train_loss, th.train_loss, rtol=1e-10)
    np.testing.assert_allclose([v for _, v in jh.val_loss], [v for _, v in th.val_loss], rtol=1e-10)
    assert [s for s, _ in jh.val_loss] == [s for s, _ in th.val_loss] and jh.best_step == th.best_step
    tparams = pyroflows.export_params(tout)
    assert jparams.keys() == tparams.keys()
    for k in tparams:
        np.testing.assert_allclose(jparams[k], tparams[k], atol=1e-10, err_msg=k)



# ============================================================================================ standardisation limits
def test_standardize_refuses_what_the_data_space_affine_cannot_hold():
    """As in pyroflows: a column with sd below the affine's floor, a constant column and float32 data at offset 1e8
    are refused with the fix named (they were clamped, given sd 1, and cast to float32 before standardising)."""
    x = np.random.default_rng(0).normal(size=(500, 2))
    x = (x - x.mean(0)) / x.std(0)
    kw = {"max_steps": 2, "validation_fraction": 0, "progress": False}
    with pytest.raises(ValueError, match=r"column 1 of data has sd 0.0001.*rescale the column \(multiply it by 10000"):
        fit_fn(Flow([DiagonalAffine(2)]), x * [1.0, 1e-4], standardize=True, **kw)
    with pytest.raises(ValueError, match=r"column 0 of data is constant"):
        fit_fn(Flow([DiagonalAffine(2)]), np.c_[np.full(500, 3.0), x[:, 1]], standardize=True, **kw)
    with pytest.raises(ValueError, match=r"column 0 of data has mean 1e\+08 and sd 1.*jax_enable_x64"):
        fit_fn(Flow([DiagonalAffine(2, dtype=jnp.float32)]), x + [1e8, 0.0], standardize=True, **kw)


def test_standardize_in_float64_fits_data_far_from_the_origin():
    rng = np.random.default_rng(1)
    x, xv = rng.normal(size=(2000, 2)) + 1e8, rng.normal(size=(500, 2)) + 1e8
    truth = -stats.norm(1e8, 1.0).logpdf(xv).sum(1).mean()
    with jax.enable_x64(True):
        flow = Flow([DiagonalAffine(2, dtype=jnp.float64)])
        flow, h = fit_fn(flow, x, validation_data=xv, standardize=True, max_steps=200, lr=1e-2, progress=False)
        nll = -_mean_log_prob(flow, xv)
    assert nll == pytest.approx(h.best_val_loss, rel=1e-9)
    assert h.best_val_loss == pytest.approx(truth, abs=0.02)


# ============================================================================================ data types
def test_integer_data_without_dequantize_warn_and_lists_are_data():
    counts = np.random.default_rng(0).poisson(4.0, size=(300, 2))
    with pytest.warns(UserWarning, match=r"only integer values.*dequantize=True"):
        fit_fn(Flow([DiagonalAffine(2)]), counts, max_steps=2, progress=False)
    x = _moons(300, 0)
    _, h_list = fit_fn(Flow([DiagonalAffine(2)]), x.tolist(), max_steps=3, progress=False)
    _, h = fit_fn(Flow([DiagonalAffine(2)]), x, max_steps=3, progress=False)
    assert h_list.train_loss == h.train_loss


# ======================================================================================= optimizer, scheduler, callback
def test_optax_optimizer_replaces_adam_and_leaves_the_buffers_alone():
    optax = pytest.importorskip("optax")
    x = np.random.default_rng(1).normal([1.0, -2.0], [0.5, 2.0], size=(200, 2))
    kw = {"batch_size": 50, "max_steps": 40, "validation_fraction": 0, "progress": False}
    _, h_default = fit_fn(Flow([DiagonalAffine(2)]), x, lr=0.05, **kw)
    _, h_same = fit_fn(Flow([DiagonalAffine(2)]), x, optimizer=optax.adam(0.05), **kw)
    np.testing.assert_allclose(h_same.train_loss, h_default.train_loss, rtol=1e-6)
    flow = Flow([DiagonalAffine(2), ReversePermutation(2), DiagonalAffine(2)])
    out, h = fit_fn(flow, x, optimizer=optax.adamw(0.05, weight_decay=10.0), **kw)
    assert h.train_loss[-1] < h.train_loss[0]
    for k in ("transforms.1.perm", "transforms.1.inv_perm"):  # weight decay never reaches the stored permutation
        np.testing.assert_array_equal(np.asarray(out.params[k]), np.asarray(flow.params[k]))
    with pytest.raises(ValueError, match="with optimizer= set the learning rate"):
        fit_fn(Flow([DiagonalAffine(2)]), x, optimizer=optax.adam(0.1), lr=0.1, **kw)
    with pytest.raises(TypeError, match=r"optax.GradientTransformation.*pyroflows.fit takes a torch optimizer"):
        fit_fn(Flow([DiagonalAffine(2)]), x, optimizer=lambda p: None, **kw)
    with pytest.raises(TypeError, match="carries its own schedule"):
        fit_fn(Flow([DiagonalAffine(2)]), x, optimizer=optax.adam(0.1), scheduler=optax.constant_schedule(0.1), **kw)


def test_scheduler_is_an_optax_schedule_for_the_default_adam():
    optax = pytest.importorskip("optax")
    x = np.random.default_rng(1).normal(size=(200, 2))
    kw = {"batch_size": 50, "validation_fraction": 0, "progress": False}
    five, _ = fit_fn(Flow([DiagonalAffine(2)]), x, max_steps=5, lr=0.05, **kw)
    frozen, _ = fit_fn(Flow([DiagonalAffine(2)]), x, max_steps=20, **kw,
                       scheduler=optax.piecewise_constant_schedule(0.05, {5: 0.0}))
    assert _same_params(frozen, five)  # learning rate 0 after five steps
    with pytest.raises(ValueError, match="the schedule gives the learning rate: drop lr="):
        fit_fn(Flow([DiagonalAffine(2)]), x, max_steps=5, lr=0.05, scheduler=optax.constant_schedule(0.1), **kw)


def test_callback_sees_each_evaluation_and_can_stop():
    rng = np.random.default_rng(2)
    x, xv = rng.normal(5.0, 2.0, size=(300, 2)), rng.normal(5.0, 2.0, size=(100, 2))
    seen = []

    def callback(step, loss, flow):
        seen.append((step, loss, -_mean_log_prob(flow, xv)))
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
