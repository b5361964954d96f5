"""The affine transformer's ``scale`` option, in both packages: ``"exp"`` (default, ``exp`` of a log-scale
soft-clamped to (-5, 5)) and ``"softplus"`` (``1e-3 + softplus(r + c)``, FlowJAX's form).

Values and log-derivatives against the formulas written out here in NumPy, the identity at raw zeros, the softplus
scale's linear growth past the exponential form's bound, round trips, the spec (saved with a flow, restored by
``load``), and the error for an unknown name. Round trips, log-determinants against autodiff Jacobians and the
cross-package parity of a whole MAF with this option run in the catalogue tests (``"MAF-softplus"``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
import jax.numpy as jnp  # noqa: E402
from catalogue import perturb  # noqa: E402

import numpyroflows  # noqa: E402
import pyroflows  # noqa: E402
from numpyroflows.transforms import transformers as JT  # noqa: E402
from pyroflows.transforms import transformers as TT  # noqa: E402

MIN_SCALE = 1e-3
C = math.log(math.expm1(1.0 - MIN_SCALE))


def _expected(x, shift, raw, scale):
    if scale == "softplus":
        a = MIN_SCALE + np.logaddexp(0.0, raw + C)
    else:
        a = np.exp(raw / (1.0 + np.abs(raw) / 5.0))
    return shift + a * x, np.log(a)


def _run(pkg: str, scale: str, x, params, direction: str):
    if pkg == "torch":
        t = TT.make_transformer({"name": "affine", "scale": scale})
        out, ld = getattr(t, direction)(torch.as_tensor(x), torch.as_tensor(params))
        return out.numpy(), ld.numpy()
    with jax.enable_x64(True):
        t = JT.make_transformer({"name": "affine", "scale": scale})
        out, ld = getattr(t, direction)(jnp.asarray(x), jnp.asarray(params))
        return np.asarray(out), np.asarray(ld)


@pytest.mark.parametrize("pkg", ["torch", "jax"])
@pytest.mark.parametrize("scale", ["exp", "softplus"])
def test_values_log_derivatives_and_round_trip(pkg, scale):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50,)) * 3
    params = np.stack([rng.normal(size=50), rng.normal(size=50) * 4], -1)
    params[:3, 1] = [-40.0, 0.0, 40.0]  # deep in both tails and at the identity
    y, ld = _run(pkg, scale, x, params, "forward")
    y_ref, ld_ref = _expected(x, params[:, 0], params[:, 1], scale)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ld, ld_ref, rtol=1e-12, atol=1e-12)
    x_back, ld_inv = _run(pkg, scale, y, params, "inverse")
    np.testing.assert_allclose(x_back, x, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ld_inv, -ld_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pkg", ["torch", "jax"])
def test_identity_at_zero_and_softplus_grows_past_the_exp_bound(pkg):
    x = np.array([-2.0, 0.5, 3.0])
    for scale in ("exp", "softplus"):
        y, ld = _run(pkg, scale, x, np.zeros((3, 2)), "forward")
        np.testing.assert_allclose(y, x, atol=1e-12)
        np.testing.assert_allclose(ld, 0.0, atol=1e-12)
    big = np.tile([0.0, 200.0], (3, 1))
    _, ld_exp = _run(pkg, "exp", x, big, "forward")
    _, ld_soft = _run(pkg, "softplus", x, big, "forward")
    assert np.all(ld_exp < 5.0)  # exp(5) ≈ 148 at most per layer
    np.testing.assert_allclose(ld_soft, math.log(200.0 + C + MIN_SCALE), rtol=1e-12)  # linear growth: a ≈ r + c
    tiny = np.tile([0.0, -200.0], (3, 1))
    _, ld_soft = _run(pkg, "softplus", x, tiny, "forward")
    np.testing.assert_allclose(ld_soft, math.log(MIN_SCALE), rtol=1e-9)  # the floor


@pytest.mark.parametrize("module", [TT, JT], ids=["torch", "jax"])
def test_spec_repr_and_errors(module):
    default, soft = module.make_transformer("affine"), module.make_transformer({"name": "affine", "scale": "softplus"})
    assert default.spec() == {"name": "affine"} and repr(default) == "Affine()"  # unchanged for saved default flows
    assert soft.spec() == {"name": "affine", "scale": "softplus"} and repr(soft) == "Affine(scale='softplus')"
    assert soft != default and module.make_transformer(soft.spec()) == soft
    with pytest.raises(ValueError, match=r"one of \('exp', 'softplus'\).*got 'tanh'"):
        module.Affine(scale="tanh")
    with pytest.raises(ValueError, match="scale must be one of"):
        module.make_transformer({"name": "affine", "scale": "Softplus"})


def test_saved_flows_keep_the_scale(tmp_path):
    spec = {"name": "affine", "scale": "softplus"}
    tflow = pyroflows.flows.Coupling(3, 0, 2, (8,), transformer=spec)
    perturb(tflow)
    pyroflows.save(tflow, tmp_path / "t.pt")
    back = pyroflows.load(tmp_path / "t.pt")
    x = torch.randn(7, 3)
    with torch.no_grad():
        torch.testing.assert_close(back().log_prob(x), tflow().log_prob(x))
    assert all(t.transformer.scale == "softplus" for t in back.transforms if hasattr(t, "transformer"))
    with jax.enable_x64(True):
        jflow = numpyroflows.flows.Coupling(3, 0, 2, (8,), transformer=spec)
        jflow = numpyroflows.import_params(jflow, pyroflows.export_params(tflow.double()))
        numpyroflows.save(jflow, tmp_path / "j.npz")
        jback = numpyroflows.load(tmp_path / "j.npz")
        np.testing.assert_allclose(np.asarray(jback().log_prob(jnp.asarray(x.double().numpy()))),
                                   tflow().log_prob(x.double()).detach().numpy(), rtol=1e-9, atol=1e-9)
        assert all(t.transformer.scale == "softplus" for t in jback.transforms if hasattr(t, "transformer"))


@pytest.mark.parametrize("module", [TT, JT], ids=["torch", "jax"])
def test_min_scale_sets_the_softplus_floor(module):
    """``min_scale`` (FlowJAX's floor is 1e-2): identity at raw zeros, the floor far below, the same in both packages,
    kept in the spec; only for ``scale="softplus"``."""
    spec = {"name": "affine", "scale": "softplus", "min_scale": 0.01}
    t = module.make_transformer(spec)
    assert t.spec() == spec and module.make_transformer(t.spec()) == t
    c = math.log(math.expm1(0.99))
    x = np.array([-2.0, 0.5, 3.0])
    raw = np.array([[0.0, 0.0], [0.1, -200.0], [-0.3, 1.7]])
    if module is TT:
        y, ld = (v.numpy() for v in t.forward(torch.as_tensor(x), torch.as_tensor(raw)))
    else:
        with jax.enable_x64(True):
            y, ld = (np.asarray(v) for v in t.forward(jnp.asarray(x), jnp.asarray(raw)))
    a = 0.01 + np.logaddexp(0.0, raw[:, 1] + c)
    np.testing.assert_allclose(ld, np.log(a), rtol=1e-12)
    np.testing.assert_allclose(y, raw[:, 0] + a * x, rtol=1e-12)
    assert ld[0] == pytest.approx(0.0, abs=1e-12) and ld[1] == pytest.approx(math.log(0.01), rel=1e-9)
    with pytest.raises(ValueError, match="floor of scale='softplus'"):
        module.make_transformer({"name": "affine", "min_scale": 0.01})
    with pytest.raises(ValueError, match=r"min_scale must lie in \(0, 1\)"):
        module.make_transformer({"name": "affine", "scale": "softplus", "min_scale": 1.5})
