"""numpyroflows Planar / Radial / Sylvester transforms against pyroflows': same parameters (exported from pyroflows,
imported into numpyroflows) and same inputs give the same log-densities, forward and inverse values and log-dets
(float64, 1e-9) in 4-D with a context, with Sylvester's Householder count set; the JAX inverse is exact on fresh data
with a broadcast context, all under ``jax.jit``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import numpyroflows  # noqa: E402
import pyroflows  # noqa: E402
from numpyroflows.flows.core import Flow as JFlow  # noqa: E402
from numpyroflows.transforms.planar import PlanarTransform as JPlanar  # noqa: E402
from numpyroflows.transforms.radial import RadialTransform as JRadial  # noqa: E402
from numpyroflows.transforms.sylvester import SylvesterTransform as JSylvester  # noqa: E402
from pyroflows.flows import Flow as TFlow  # noqa: E402
from pyroflows.transforms import PlanarTransform as TPlanar  # noqa: E402
from pyroflows.transforms import RadialTransform as TRadial  # noqa: E402
from pyroflows.transforms import SylvesterTransform as TSylvester  # noqa: E402

D = 4
H = (8, 8)
TOL = {"atol": 1e-9, "rtol": 1e-9}

# name -> (pyroflows class, numpyroflows class, extra kwargs)
CASES = {
    "planar": (TPlanar, JPlanar, {}),
    "radial": (TRadial, JRadial, {}),
    "sylvester-householder": (TSylvester, JSylvester, {"q_type": "householder", "num_ortho": 2,
                                                       "num_householder": 3}),
    "sylvester-orthogonal": (TSylvester, JSylvester, {"q_type": "orthogonal", "num_ortho": 3}),
}


def _pair(name: str, context_dim: int, num: int = 1):
    tcls, jcls, kw = CASES[name]
    torch.manual_seed(0)
    tflow = TFlow([tcls(D, context_dim, hidden_dims=H, **kw) for _ in range(num)]).double()
    with torch.no_grad():
        for p in tflow.parameters():  # away from the initialisation
            p.add_(0.3 * torch.randn_like(p))
    keys = jax.random.split(jax.random.PRNGKey(1), num)
    jflow = JFlow([jcls(D, context_dim, hidden_dims=H, **kw, key=k) for k in keys])
    assert set(jflow.params) == set(tflow.state_dict())
    for k, v in tflow.state_dict().items():
        assert jflow.params[k].shape == tuple(v.shape), k
    return tflow, numpyroflows.import_params(jflow, pyroflows.export_params(tflow))


@jax.jit
def _jax_side(flow, x, ctx, y, ctx_b):
    """Everything the test needs from numpyroflows, in one compiled function (compiling once is faster than running
    the root-finding loops op by op)."""
    T = flow.transform(ctx)
    fresh = flow.transform(ctx_b)
    x_of_y, ld_inv = fresh.inverse_and_log_det(y)
    y_back, ld_fwd = fresh.forward_and_log_det(x_of_y)
    return {"lp": flow(ctx).log_prob(x), "fwd": T.forward_and_log_det(x), "inv": T.inverse_and_log_det(x),
            "round_trip": (x_of_y, y_back, ld_inv, ld_fwd)}


@pytest.mark.parametrize("name", list(CASES))
def test_parity_round_trip_and_jit(name):
    # with a context only: without one, and without broadcasting, the catalogue's Planar, Radial, Sylvester and
    # Sylvester-orthogonal flows are compared in tests/test_parity/test_catalogue.py
    tflow, jflow = _pair(name, 3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, D)) * 2
    x[:2] *= 10
    ctx = rng.normal(size=(12, 3))
    y = rng.normal(size=(2, 6, D)) * 3  # fresh data, batch shape (2, 6)
    ctx_b = rng.normal(size=(6, 3))  # broadcasts against (2, 6)
    tctx = torch.as_tensor(ctx)
    out = _jax_side(jflow, jnp.asarray(x), jnp.asarray(ctx), jnp.asarray(y), jnp.asarray(ctx_b))

    # parity with pyroflows (float64, 1e-9): log_prob, forward and inverse of fresh data, log-dets
    lp_t = tflow(tctx).log_prob(torch.as_tensor(x)).detach().numpy()
    np.testing.assert_allclose(np.asarray(out["lp"]), lp_t, **TOL)
    for direction, key in (("forward_and_log_det", "fwd"), ("inverse_and_log_det", "inv")):
        yt, ldt = getattr(tflow.transform(tctx), direction)(torch.as_tensor(x))
        yj, ldj = out[key]
        np.testing.assert_allclose(np.asarray(yj), yt.detach().numpy(), **TOL)
        np.testing.assert_allclose(np.asarray(ldj), ldt.detach().numpy(), **TOL)

    # exact inverse of fresh data, with a broadcast context
    x_of_y, y_back, ld_inv, ld_fwd = out["round_trip"]
    assert x_of_y.shape == y.shape and ld_inv.shape == (2, 6)
    np.testing.assert_allclose(np.asarray(y_back), y, atol=1e-10)
    np.testing.assert_allclose(np.asarray(ld_inv), -np.asarray(ld_fwd), atol=1e-10)


@jax.jit
def _round_trip32(t, x, c):
    y, ld = t.forward_and_log_det(x, c)
    return y, ld, t.inverse_and_log_det(y, c)[0]


def test_defaults_and_float32():
    t = JSylvester(5, q_type="orthogonal", num_ortho=3)
    assert t.params["head.q_raw"].shape == (5, 3) and t.params["head.r_upper"].shape == (3,)
    t = JSylvester(5)
    assert t.params["head.householder"].shape == (5, 5)
    assert "head.r_upper" not in JSylvester(3, num_ortho=1).params
    with pytest.raises(ValueError):
        JSylvester(3, q_type="orthogonal", num_householder=2)
    with pytest.raises(ValueError):
        JSylvester(3, num_ortho=4)
    with pytest.raises(ValueError):
        JSylvester(3, q_type="nope")
    f32 = {"dtype": jnp.float32}  # float32 transforms, with x64 on
    for t in (JPlanar(3, key=jax.random.PRNGKey(2), **f32), JRadial(3, 2, **f32), JSylvester(3, 2, num_ortho=2, **f32)):
        x = jnp.asarray(np.random.default_rng(2).normal(size=(7, 3)), jnp.float32)
        c = jnp.ones((7, 2), jnp.float32) if t.context_dim else None
        y, ld, x_back = _round_trip32(t, x, c)
        assert y.dtype == jnp.float32 and ld.dtype == jnp.float32 and x_back.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(x_back), np.asarray(x), atol=1e-4)
