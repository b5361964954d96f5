"""The JAX counterpart of test_catalogue.py: one parametrized suite over every numpyroflows recipe and transform
(shapes, exact inverses, log-determinants against autodiff Jacobians, normalisation, gradients, context, errors).

Every function under test is jitted once at module level and takes the flow as an argument (a flow is a pytree), so
each flow compiles once per test."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import numpyroflows  # noqa: E402
from numpyroflows import flows as F  # noqa: E402
from numpyroflows import transforms as T  # noqa: E402

H = (8, 8)
#: integer-valued buffers kept (as floats) among the parameters: never perturbed, no gradient expected
BUFFERS = ("perm", "inv_perm", "initialized")


def _key(i: int = 0):
    return jax.random.PRNGKey(i)


#: name -> factory(input_dim, context_dim, key) -> Flow; every recipe takes a context
CATALOGUE = {
    "MAF": lambda d, c, k: F.MAF(d, c, num_transforms=2, hidden_dims=H, key=k),
    "MAF-softplus": lambda d, c, k: F.MAF(d, c, 2, H, transformer={"name": "affine", "scale": "softplus"}, key=k),
    "MAF-randperm": lambda d, c, k: F.MAF(d, c, num_transforms=3, hidden_dims=H, randperm=True, key=k),
    "IAF": lambda d, c, k: F.IAF(d, c, num_transforms=2, hidden_dims=H, key=k),
    "NSF": lambda d, c, k: F.NSF(d, c, num_transforms=2, hidden_dims=H, count_bins=5, bound=3.0, key=k),
    "Coupling-spline": lambda d, c, k: F.Coupling(d, c, 2, H, transformer="spline", count_bins=5, bound=3.0, key=k),
    "Coupling-mixture": lambda d, c, k: F.Coupling(d, c, 2, H, transformer="mixture", mask="alternating",
                                                   count_bins=3, key=k),
    "RealNVP": lambda d, c, k: F.RealNVP(d, c, num_transforms=2, hidden_dims=H, key=k),
    "NICE": lambda d, c, k: F.NICE(d, c, num_transforms=2, hidden_dims=H, key=k),
    "Elementwise-bspline": lambda d, c, k: F.Elementwise(d, c, 1, H, transformer="bspline", bound=3.0, key=k),
    "Elementwise-affine": lambda d, c, k: F.Elementwise(d, c, 1, H, transformer="affine", key=k),
    "BNAF": lambda d, c, k: F.BNAF(d, c, num_transforms=2, hidden_factor=4, key=k),
    "Planar": lambda d, c, k: F.Planar(d, c, num_transforms=2, hidden_dims=H, key=k),
    "Radial": lambda d, c, k: F.Radial(d, c, num_transforms=2, hidden_dims=H, key=k),
    "Sylvester": lambda d, c, k: F.Sylvester(d, c, num_transforms=2, hidden_dims=H, key=k),
    "Sylvester-orthogonal": lambda d, c, k: F.Sylvester(d, c, 2, H, num_ortho=max(1, d - 1), q_type="orthogonal",
                                                        key=k),
    "LULinear": lambda d, c, k: numpyroflows.Flow([T.LULinear(d, c, H, key=k), T.ActNorm(d)]),
    "Householder": lambda d, c, k: numpyroflows.Flow([T.Householder(d, c, H, count=2, key=k),
                                                      T.DiagonalAffine(d, c, H, key=jax.random.fold_in(k, 1))]),
    "LeakyReLU": lambda d, c, k: numpyroflows.Flow([
        T.DiagonalAffine(d, c, H, key=k), T.LeakyReLU(d, c, H, key=jax.random.fold_in(k, 1)),
        T.RandomPermutation(d, seed=1), T.LULinear(d, c, H, key=jax.random.fold_in(k, 2))]),
    "ActNorm": lambda d, c, k: numpyroflows.Flow([T.ActNorm(d, c, H, key=k), T.ReversePermutation(d)]),
}
NAMES = list(CATALOGUE)


@functools.cache
def build(name: str, input_dim: int = 3, context_dim: int = 0, dtype: str = "float64", scale: float = 0.3,
          seed: int = 0) -> numpyroflows.Flow:
    """A small flow with ActNorm initialised from data and every parameter (not the buffers) perturbed."""
    flow = CATALOGUE[name](input_dim, context_dim, _key(seed))
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(64, input_dim)) * 1.5 + 0.5)
    ctx = jnp.asarray(rng.normal(size=(64, context_dim))) if context_dim else None
    flow = T.initialize_flow(flow, x, ctx)
    params = {}
    for k in sorted(flow.params):
        v = np.asarray(flow.params[k], dtype=np.float64)
        if k.split(".")[-1] not in BUFFERS:
            v = v + scale * rng.normal(size=v.shape)
        params[k] = jnp.asarray(v, dtype=dtype)
    return flow.with_params(params)


def _normal(seed: int, *shape: int, dtype=jnp.float64):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype=dtype)


def _ctx(c: int, *batch: int, seed: int = 1, dtype=jnp.float64):
    return _normal(seed, *batch, c, dtype=dtype) if c else None


# ------------------------------------------------------------------------------------------------- jitted functions
# Compiling is what costs (1-3 s per flow and function on 2 CPU cores), so most checks share one compiled "battery"
# per flow structure: calling it again with other parameter values (same structure) does not recompile.
def _grid(n: int = 300, scale: float = 3.0):
    # y = scale * tan(u) per axis covers all of R^2 (heavy tails included); midpoint rule in u, weights scale sec^2
    u = (np.arange(n) + 0.5) / n * math.pi - math.pi / 2
    g, w = scale * np.tan(u), scale / np.cos(u) ** 2 * (math.pi / n)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    return jnp.asarray(np.stack([xx.reshape(-1), yy.reshape(-1)], -1)), jnp.asarray(np.outer(w, w).reshape(-1))


@jax.jit
def _battery(flow, inputs):
    """Round trips, log-dets against autodiff Jacobians, gradients, shapes and (2-D) the integral of the density."""
    ctx_batch, ctx1, ctx2 = inputs["ctx_batch"], inputs["ctx1"], inputs["ctx2"]
    out = {}
    # round trips both ways on a batch (one context per point)
    t = flow.transform(ctx_batch)
    out["x_back"] = t.inv(t(inputs["x"]))
    out["y_back"] = t(t.inv(inputs["y_fresh"]))
    # log-dets (one context for all points)
    t1 = flow.transform(ctx1)

    def one(x):
        y, ld = t1.forward_and_log_det(x)
        _, ld_inv = t1.inverse_and_log_det(y)
        jac = jax.jacfwd(lambda v: t1.forward_and_log_det(v)[0])(x)
        jac_inv = jax.jacfwd(lambda v: t1.inverse_and_log_det(v)[0])(y)
        return (y, ld, jnp.linalg.slogdet(jac)[1], ld_inv, jnp.linalg.slogdet(jac_inv)[1],
                t1.log_abs_det_jacobian(x, y))

    (out["y_pts"], out["ld"], out["sld"], out["ld_inv"], out["sld_inv"], out["ladj"]) = jax.vmap(one)(inputs["pts"])
    if ctx2 is not None:  # another context moves the points and their densities
        out["y_pts_other"] = flow.transform(ctx2)(inputs["pts"])
        out["lp_ctx"] = flow(ctx1).log_prob(inputs["pts"]), flow(ctx2).log_prob(inputs["pts"])

    # gradients of a reparameterised loss and of the log-density of data; shapes of the fused pair
    def loss(f):
        shape = (2,) if ctx_batch is not None else (2, 64)  # without a context: 64 draws, as with one
        xs, lps = f(ctx_batch).sample_and_log_prob(inputs["key"], shape)
        return jnp.sum(xs * xs) + jnp.sum(lps), (xs, lps, f(ctx_batch).log_prob(xs))

    out["grad_sample"], (out["xs"], out["lps"], out["lp_again"]) = jax.grad(loss, has_aux=True)(flow)
    out["grad_log_prob"] = jax.grad(lambda f: jnp.sum(f(ctx_batch).log_prob(inputs["x"])))(flow)
    if "grid" in inputs:
        pts, w = inputs["grid"]
        out["integral"] = jnp.sum(jnp.exp(flow(ctx1).log_prob(pts)) * w)
    return out


def _inputs(input_dim: int, context_dim: int, far: float = 20.0, dtype=jnp.float64, grid: bool = False) -> dict:
    x, y_fresh = _normal(4, 64, input_dim, dtype=dtype) * 2, _normal(5, 64, input_dim, dtype=dtype) * 2
    inputs = {"x": x.at[:8].multiply(far), "y_fresh": y_fresh.at[:8].multiply(far),
              "ctx_batch": _ctx(context_dim, 64, dtype=dtype), "ctx1": _ctx(context_dim, seed=2, dtype=dtype),
              "ctx2": _ctx(context_dim, seed=3, dtype=dtype), "key": _key(8),
              "pts": (_normal(6, 3, input_dim) * jnp.asarray([[1.0], [3.0], [5.0]])).astype(dtype)}
    if grid:
        inputs["grid"] = _grid()
    return inputs


@functools.cache
def battery(name: str, input_dim: int, context_dim: int, scale: float = 0.3) -> dict:
    return _battery(build(name, input_dim, context_dim, scale=scale), _inputs(input_dim, context_dim,
                                                                           grid=input_dim == 2))


#: conditional flows are checked in 3-D, unconditional ones in 2-D (where the density is also integrated)
SETTINGS = [(3, 2), (2, 0)]


@jax.jit
def _shapes(flow, key, ctxs):
    """For each context (one per batch shape): samples and their log-density."""
    out = []
    for i, ctx in enumerate(ctxs):
        d = flow(ctx) if flow.context_dim else flow().expand(ctx.shape[:-1])
        x = d.sample(jax.random.fold_in(key, i), (5,))
        out.append((x, d.log_prob(x)))
    return out


@jax.jit
def _round_trips(flow, ctx, x, y_fresh):
    t = flow.transform(ctx)
    return t.inv(t(x)), t(t.inv(y_fresh))


# ------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", ["MAF", "Planar", "LULinear"])
@pytest.mark.parametrize("context_dim", [0, 2])
def test_shapes(name, context_dim):
    flow = build(name, 3, context_dim)
    batches = [(), (4,), (2, 3)]
    # without a context the batch shapes come from expand(); the arrays only carry the shapes
    ctxs = [_normal(i, *b, context_dim or 1) for i, b in enumerate(batches)]
    for batch, (x, lp) in zip(batches, _shapes(flow, _key(3), ctxs)):
        assert x.shape == (5, *batch, 3) and lp.shape == (5, *batch)
        assert bool(jnp.all(jnp.isfinite(x))) and bool(jnp.all(jnp.isfinite(lp)))
        assert x.dtype == lp.dtype == jnp.float64
    d = flow(_ctx(context_dim, 4) if context_dim else None)
    assert d.event_shape == (3,) and d.batch_shape == ((4,) if context_dim else ())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("input_dim,context_dim", SETTINGS)
def test_fused_sample_and_log_prob(name, input_dim, context_dim):
    out = battery(name, input_dim, context_dim)
    assert out["xs"].shape == (2, 64, input_dim) and out["lps"].shape == (2, 64)
    assert bool(jnp.all(jnp.isfinite(out["xs"]))) and bool(jnp.all(jnp.isfinite(out["lps"])))
    np.testing.assert_allclose(out["lps"], out["lp_again"], atol=1e-8, rtol=1e-8)


# ------------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("input_dim,context_dim", SETTINGS)
def test_round_trip_both_ways_float64(name, input_dim, context_dim):
    # harsh parameters (scale 0.3) and fresh points, 8 of them ~50x outside the spline bounds (3.0)
    out, inputs = battery(name, input_dim, context_dim), _inputs(input_dim, context_dim)
    np.testing.assert_allclose(out["x_back"], inputs["x"], atol=1e-8, rtol=1e-9)
    np.testing.assert_allclose(out["y_back"], inputs["y_fresh"], atol=1e-8, rtol=1e-9)


@pytest.mark.parametrize("name,context_dim", [("MAF", 2), ("IAF", 0), ("NSF", 2), ("Coupling-spline", 0),
                                              ("BNAF", 2), ("Planar", 0), ("LeakyReLU", 2)])
def test_round_trip_both_ways_float32(name, context_dim):
    # realistic parameters (scale 0.1), fresh points ~10x outside the spline bounds
    flow = build(name, 3, context_dim, dtype="float32", scale=0.1)
    inputs = _inputs(3, context_dim, far=5.0, dtype=jnp.float32)
    x_back, y_back = _round_trips(flow, inputs["ctx_batch"], inputs["x"], inputs["y_fresh"])
    assert x_back.dtype == y_back.dtype == jnp.float32
    np.testing.assert_allclose(x_back, inputs["x"], atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(y_back, inputs["y_fresh"], atol=1e-3, rtol=1e-4)


# ------------------------------------------------------------------------------------------------- log-determinants
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("input_dim,context_dim", SETTINGS)
def test_log_det_matches_autodiff_jacobian(name, input_dim, context_dim):
    out = battery(name, input_dim, context_dim)
    np.testing.assert_allclose(out["ld"], out["sld"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(out["ld_inv"], out["sld_inv"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(out["ld_inv"], -out["ld"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(out["ladj"], out["ld"], atol=1e-9, rtol=0)


# ------------------------------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("name", NAMES)
def test_2d_density_integrates_to_one(name):
    # milder parameters, same structure as the 2-D battery (no recompilation)
    assert abs(float(battery(name, 2, 0, scale=0.15)["integral"]) - 1.0) < 1e-2


@pytest.mark.parametrize("name", ["NSF", "Planar"])
def test_2d_conditional_density_integrates_to_one(name):
    flow = build(name, 2, 2, scale=0.15)
    integral = jax.jit(lambda f, c, g: jnp.sum(jnp.exp(f(c).log_prob(g[0])) * g[1]))(flow, _normal(7, 2), _grid())
    assert abs(float(integral) - 1.0) < 1e-2


# ------------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("input_dim,context_dim", SETTINGS)
@pytest.mark.parametrize("loss", ["grad_sample", "grad_log_prob"])
def test_gradients_reach_every_parameter(name, input_dim, context_dim, loss):
    flow, grads = build(name, input_dim, context_dim), battery(name, input_dim, context_dim)[loss].params
    assert set(grads) == set(flow.params)
    checked = 0
    for pname, g in grads.items():
        if pname.split(".")[-1] in BUFFERS:
            continue
        checked += 1
        assert bool(jnp.all(jnp.isfinite(g))), f"non-finite gradient for {pname}"
        assert float(jnp.abs(g).sum()) > 0, f"zero gradient for {pname}"
    assert checked


# ------------------------------------------------------------------------------------------------- context
@pytest.mark.parametrize("name", NAMES)
def test_context_changes_the_output(name):
    out = battery(name, 3, 2)
    assert float(jnp.abs(out["y_pts"] - out["y_pts_other"]).max()) > 1e-6
    lp1, lp2 = out["lp_ctx"]
    assert float(jnp.abs(lp1 - lp2).max()) > 1e-6


# ------------------------------------------------------------------------------------------------- errors
def test_clear_errors():
    flow = F.NSF(3, 2, num_transforms=1, hidden_dims=H)
    ctx = jnp.ones(2)
    with pytest.raises(ValueError, match="input_dim=3"):
        flow(ctx).log_prob(jnp.zeros((5, 4)))
    with pytest.raises(ValueError, match="input_dim=3"):
        flow.transform(ctx)(jnp.zeros((5, 2)))
    with pytest.raises(ValueError, match="context_dim=2"):
        flow(jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match="needs a context"):
        flow()
    with pytest.raises(ValueError, match="needs a context"):
        flow.transform()
    with pytest.raises(ValueError, match="NaN"):
        flow(ctx).log_prob(jnp.asarray([[0.0, math.nan, 1.0]]))
    with pytest.raises(ValueError, match="NaN"):
        flow.transform(ctx)(jnp.asarray([0.0, math.nan, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        flow(jnp.asarray([math.nan, 0.0]))
    with pytest.raises(ValueError, match="needs a context"):
        flow.transforms[0].forward_and_log_det(jnp.zeros(3))
    with pytest.raises(ValueError, match="context_dim=0"):
        F.MAF(3, num_transforms=1, hidden_dims=H)(jnp.zeros(2))
    with pytest.raises(ValueError, match="input_dim=3"):
        F.MAF(3, num_transforms=1, hidden_dims=H)().log_prob(jnp.zeros(2))


def test_validation_can_be_disabled():
    flow = F.MAF(2, num_transforms=1, hidden_dims=H)
    x = jnp.asarray([[math.nan, 0.0]])
    try:
        numpyroflows.set_validation(False)
        assert bool(jnp.isnan(flow().log_prob(x)).all())
    finally:
        numpyroflows.set_validation(True)


def test_catalogue_covers_every_transform_class():
    used = {type(t).__name__ for name in NAMES for t in build(name, 3, 2).transforms}
    # Sigmoid/Tanh change the support (tested elsewhere); Permutation and the orientation aliases are thin variants;
    # _LinearBase is a private base class
    exempt = {"Sigmoid", "Tanh", "MaskedAutoregressiveTransform", "InverseAutoregressiveTransform", "Permutation",
              "_LinearBase"}
    missing = set(T.TRANSFORMS) - used - exempt
    assert not missing, f"transforms missing from the catalogue suite: {sorted(missing)}"
