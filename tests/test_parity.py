"""pyroflows and numpyroflows compute the same flows: same parameters (exported from one, imported into the other)
and same inputs give the same log-densities, forward and inverse values and log-determinants (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import numpyroflows  # noqa: E402
import pyroflows  # noqa: E402
from numpyroflows import flows as jflows  # noqa: E402
from pyroflows import flows as tflows  # noqa: E402

H = (8, 8)
RECIPES = {
    "MAF": lambda pkg, c: pkg.MAF(3, c, num_transforms=2, hidden_dims=H),
    "MAF-spline": lambda pkg, c: pkg.MAF(3, c, 2, H, transformer="spline", count_bins=5, bound=3.0),
    "MAF-softplus": lambda pkg, c: pkg.MAF(3, c, 2, H, transformer={"name": "affine", "scale": "softplus"}),
    "NSF-randperm": lambda pkg, c: pkg.NSF(3, c, 3, H, count_bins=5, bound=3.0, randperm=True),
    "IAF": lambda pkg, c: pkg.IAF(3, c, num_transforms=2, hidden_dims=H),
    "NSF": lambda pkg, c: pkg.NSF(3, c, num_transforms=2, hidden_dims=H, count_bins=5, bound=3.0),
    "Coupling-spline": lambda pkg, c: pkg.Coupling(3, c, 2, H, transformer="spline", count_bins=5, bound=3.0),
    "Coupling-mixture": lambda pkg, c: pkg.Coupling(3, c, 2, H, transformer="mixture", mask="random", count_bins=3),
    "RealNVP": lambda pkg, c: pkg.RealNVP(3, c, num_transforms=3, hidden_dims=H),
    "NICE": lambda pkg, c: pkg.NICE(3, c, num_transforms=3, hidden_dims=H),
    "Elementwise-bspline": lambda pkg, c: pkg.Elementwise(3, c, 1, H, transformer="bspline", bound=3.0),
    "BNAF": lambda pkg, c: pkg.BNAF(3, c, num_transforms=2, hidden_factor=4),
    "Planar": lambda pkg, c: pkg.Planar(3, c, num_transforms=3, hidden_dims=H),
    "Radial": lambda pkg, c: pkg.Radial(3, c, num_transforms=3, hidden_dims=H),
    "Sylvester": lambda pkg, c: pkg.Sylvester(3, c, num_transforms=2, hidden_dims=H),
}


def _pair(name: str, context_dim: int):
    torch.manual_seed(0)
    tflow = RECIPES[name](tflows, context_dim).double()
    with torch.no_grad():
        for p in tflow.parameters():  # away from the identity-near initialisation
            p.add_(0.3 * torch.randn_like(p))
    jflow = numpyroflows.import_params(RECIPES[name](jflows, context_dim), pyroflows.export_params(tflow))
    return tflow, jflow


@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize("context_dim", [0, 2])
def test_same_parameters_same_densities_and_maps(name, context_dim):
    tflow, jflow = _pair(name, context_dim)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)) * 2
    x[:3] *= 10  # far outside the spline bound
    ctx = rng.normal(size=(16, context_dim)) if context_dim else None
    tctx = torch.as_tensor(ctx) if ctx is not None else None
    jctx = jnp.asarray(ctx) if ctx is not None else None
    lp_t = tflow(tctx).log_prob(torch.as_tensor(x)).detach().numpy()
    lp_j = np.asarray(jflow(jctx).log_prob(jnp.asarray(x)))
    np.testing.assert_allclose(lp_j, lp_t, atol=1e-9, rtol=1e-9)
    for direction in ("forward_and_log_det", "inverse_and_log_det"):
        yt, ldt = getattr(tflow.transform(tctx), direction)(torch.as_tensor(x))
        yj, ldj = getattr(jflow.transform(jctx), direction)(jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(yj), yt.detach().numpy(), atol=1e-9, rtol=1e-9)
        np.testing.assert_allclose(np.asarray(ldj), ldt.detach().numpy(), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", list(RECIPES))
def test_round_trip_and_params_back_to_pyroflows(name):
    tflow, jflow = _pair(name, 2)
    back = RECIPES[name](tflows, 2).double()
    pyroflows.import_params(back, numpyroflows.export_params(jflow))
    x = torch.randn(5, 3, dtype=torch.float64)
    c = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(back(c).log_prob(x), tflow(c).log_prob(x), atol=0, rtol=0)
    T = jflow.transform(jnp.asarray(c.numpy()))
    y = jnp.asarray(x.numpy())
    np.testing.assert_allclose(np.asarray(T(T.inv(y))), x.numpy(), atol=1e-10)


def test_jit_grad_and_numpyro_module():
    import numpyro
    from numpyro import handlers

    jflow = jflows.NSF(3, num_transforms=2, hidden_dims=H, key=jax.random.PRNGKey(0))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(32, 3)))

    @jax.jit
    def loss(flow):
        return -flow().log_prob(x).mean()

    grads = jax.grad(loss)(jflow)
    assert set(grads.params) == set(jflow.params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads.params.values())

    def model():
        flow = numpyroflows.module("flow", jflow)
        numpyro.sample("x", flow(), obs=x)

    trace = handlers.trace(handlers.seed(model, 0)).get_trace()
    names = {k for k, v in trace.items() if v["type"] == "param"}
    assert names == {f"flow${k}" for k in jflow.params}


@pytest.mark.parametrize("name", ["NSF", "BNAF", "Sylvester"])
def test_numpyroflows_save_load_round_trip(name, tmp_path):
    _, jflow = _pair(name, 2)
    path = tmp_path / "flow.npz"
    numpyroflows.save(jflow, path)
    loaded = numpyroflows.load(path)
    assert type(loaded) is type(jflow)
    x, c = jnp.asarray(np.random.default_rng(2).normal(size=(6, 3))), jnp.asarray(np.ones((6, 2)))
    np.testing.assert_array_equal(np.asarray(loaded(c).log_prob(x)), np.asarray(jflow(c).log_prob(x)))


def test_numpyroflows_load_refuses_an_older_file_format(tmp_path):
    import json

    _, jflow = _pair("MAF", 0)
    path = tmp_path / "old.npz"
    meta = json.dumps({"format": "numpyroflows", "version": 1, "config": jflow.config()})
    np.savez(path, __meta__=np.array(meta), **{f"param:{k}": np.asarray(v) for k, v in jflow.params.items()})
    with pytest.raises(ValueError, match="format version 1.*Refit the flow"):
        numpyroflows.load(path)


def test_custom_base_distribution_matches_pyroflows():
    import numpyro.distributions as ndist
    import pyro.distributions as pdist

    loc, scale = np.array([1.0, -2.0, 0.5]), np.array([2.0, 0.5, 1.5])
    tflow, _ = _pair("MAF", 0)
    tflow.base = pdist.Normal(torch.as_tensor(loc), torch.as_tensor(scale)).to_event(1)
    jbase = ndist.Normal(jnp.asarray(loc), jnp.asarray(scale)).to_event(1)
    jflow = numpyroflows.import_params(jflows.Flow(RECIPES["MAF"](jflows, 0).transforms, base=jbase),
                                       pyroflows.export_params(tflow))
    x = np.random.default_rng(4).normal(size=(7, 3))
    np.testing.assert_allclose(np.asarray(jflow().log_prob(jnp.asarray(x))),
                               tflow().log_prob(torch.as_tensor(x)).detach().numpy(), atol=1e-9, rtol=1e-9)
    xs, lp = jflow().sample_and_log_prob(jax.random.PRNGKey(0), (5,))
    np.testing.assert_allclose(np.asarray(lp), np.asarray(jflow().log_prob(xs)), atol=1e-9)
    with pytest.raises(ValueError, match="custom base"):
        jflow.config()
