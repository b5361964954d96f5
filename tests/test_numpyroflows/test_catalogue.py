"""The JAX counterpart of tests/test_pyroflows/test_catalogue.py: every entry of the catalogue (tests/catalogue.py),
built in numpyroflows (perturbed parameters, ActNorms initialised from data), in 3-D with a context (without one if it
takes none) and in 2-D without: samples and their fused log-densities, round trips both ways (fresh points, some far
outside the spline bounds), log-determinants against autodiff Jacobians (3-D; in 2-D the density's integral checks
them), gradients reaching every parameter (3-D, with the context), a context changing the output, the 2-D density
integrating to 1, and save/load; plus shapes, float32 round trips and errors.

Compiling is what costs (1-3 s per flow and function on 2 CPU cores): every function under test is jitted once at
module level and takes the flow as an argument (a flow is a pytree), and each (entry, dimensions) is one test that
runs all its checks (as subtests) on one compiled "battery", so that the two xdist workers never compile the same
flow twice. Calling the battery again with other parameter values, or on the flow read back by ``load``, reuses it."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from catalogue import BUFFERS, CATALOGUE, NAMES, H, grid_2d, to_support  # noqa: E402
from catalogue import build_jax as build  # noqa: E402

import numpyroflows  # noqa: E402
from numpyroflows import flows as F  # noqa: E402


def _key(i: int = 0):
    return jax.random.PRNGKey(i)


def _normal(seed: int, *shape: int, dtype=jnp.float64):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype=dtype)


def _ctx(c: int, *batch: int, seed: int = 1, dtype=jnp.float64):
    return _normal(seed, *batch, c, dtype=dtype) if c else None


def settings(name: str) -> list[tuple[int, int]]:
    """``(input_dim, context_dim)`` an entry is checked in: 3-D with a context (if it takes one), and 2-D without one,
    where its density is also integrated."""
    return [(3, 2 if CATALOGUE[name].takes_context else 0), (2, 0)]


CASES = [(n, d, c) for n in NAMES for d, c in settings(n)]


# ------------------------------------------------------------------------------------------------- jitted functions
@jax.jit
def _battery(flow, inputs):
    """Round trips, log-dets against autodiff Jacobians, shapes, gradients (3-D) and the integral of the density
    (2-D)."""
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
        return y, ld, ld_inv, t1.log_abs_det_jacobian(x, y)

    def autodiff(x, y):
        jac = jax.jacfwd(lambda v: t1.forward_and_log_det(v)[0])(x)
        jac_inv = jax.jacfwd(lambda v: t1.inverse_and_log_det(v)[0])(y)
        return jnp.linalg.slogdet(jac)[1], jnp.linalg.slogdet(jac_inv)[1]

    out["y_pts"], out["ld"], out["ld_inv"], out["ladj"] = jax.vmap(one)(inputs["pts"])
    if inputs["x"].shape[-1] == 3:  # in 2-D the density's integral checks the log-dets; no Jacobian programs
        out["sld"], out["sld_inv"] = jax.vmap(autodiff)(inputs["pts"], out["y_pts"])
    if ctx2 is not None:  # another context moves the points and their densities
        out["y_pts_other"] = flow.transform(ctx2)(inputs["pts"])
        out["lp_ctx"] = flow(ctx1).log_prob(inputs["data_pts"]), flow(ctx2).log_prob(inputs["data_pts"])

    # gradients of a reparameterised loss and of the log-density of data; shapes of the fused pair
    def loss(f):
        shape = (2,) if ctx_batch is not None else (2, 64)  # without a context: 64 draws, as with one
        xs, lps = f(ctx_batch).sample_and_log_prob(inputs["key"], shape)
        return jnp.sum(xs * xs) + jnp.sum(lps), (xs, lps, f(ctx_batch).log_prob(xs))

    if inputs["x"].shape[-1] == 3:  # the 3-D setting, with its context: where every parameter is in play
        out["grad_sample"], (out["xs"], out["lps"], out["lp_again"]) = jax.grad(loss, has_aux=True)(flow)
        out["grad_log_prob"] = jax.grad(lambda f: jnp.sum(f(ctx_batch).log_prob(inputs["y_fresh"])))(flow)
    else:  # 2-D: the same parameters without a context; no gradient programs to compile a second time
        out["xs"], out["lps"], out["lp_again"] = loss(flow)[1]
    if "grid" in inputs:
        pts, w = inputs["grid"]
        out["integral"] = jnp.sum(jnp.exp(flow(ctx1).log_prob(pts)) * w)
    return out


def _inputs(name: str, input_dim: int, context_dim: int, far: float = 20.0, dtype=jnp.float64) -> dict:
    """Base-side points ``x`` and ``pts`` (``x`` with 8 rows ``far`` outside the spline bounds, unless the support is
    bounded: a squashing layer saturates there), data-side points ``y_fresh`` and ``data_pts`` in the support."""
    x, u = _normal(4, 64, input_dim, dtype=dtype) * 2, _normal(5, 64, input_dim, dtype=dtype) * 2
    pts = (_normal(6, 3, input_dim) * jnp.asarray([[1.0], [3.0], [5.0]])).astype(dtype)
    inputs = {"x": x.at[:8].multiply(1.0 if CATALOGUE[name].support else far),
              "y_fresh": to_support(name, u.at[:8].multiply(far)), "pts": pts, "data_pts": to_support(name, pts),
              "ctx_batch": _ctx(context_dim, 64, dtype=dtype), "ctx1": _ctx(context_dim, seed=2, dtype=dtype),
              "ctx2": _ctx(context_dim, seed=3, dtype=dtype), "key": _key(8)}
    if input_dim == 2:
        inputs["grid"] = tuple(jnp.asarray(a) for a in grid_2d(name, 300))
    return inputs


@functools.cache
def battery(name: str, input_dim: int, context_dim: int, scale: float = 0.3) -> dict:
    return _battery(build(name, input_dim, context_dim, scale=scale), _inputs(name, input_dim, context_dim))


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


# ------------------------------------------------------------------------------------------------- checks
def _check_fused_sample_and_log_prob(out: dict, input_dim: int) -> None:
    assert out["xs"].shape == (2, 64, input_dim) and out["lps"].shape == (2, 64)
    assert bool(jnp.all(jnp.isfinite(out["xs"]))) and bool(jnp.all(jnp.isfinite(out["lps"])))
    np.testing.assert_allclose(out["lps"], out["lp_again"], atol=1e-8, rtol=1e-8)


def _check_round_trips(out: dict, inputs: dict) -> None:
    # harsh parameters (scale 0.3) and fresh points, 8 of them ~50x outside the spline bounds (3.0)
    np.testing.assert_allclose(out["x_back"], inputs["x"], atol=1e-8, rtol=1e-9)
    np.testing.assert_allclose(out["y_back"], inputs["y_fresh"], atol=1e-8, rtol=1e-9)


def _check_log_dets(out: dict) -> None:
    if "sld" in out:  # 3-D: against the autodiff Jacobian
        np.testing.assert_allclose(out["ld"], out["sld"], atol=1e-6, rtol=0)
        np.testing.assert_allclose(out["ld_inv"], out["sld_inv"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(out["ld_inv"], -out["ld"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(out["ladj"], out["ld"], atol=1e-9, rtol=0)


def _held_fixed(flow, pname: str) -> bool:
    """Whether ``pname`` (``transforms.<i>.<name>``) is a buffer, or a value its transform holds fixed."""
    parts = pname.split(".")
    if parts[-1] in BUFFERS:
        return True
    return parts[0] == "transforms" and ".".join(parts[2:]) in flow.transforms[int(parts[1])].fixed_params


def _check_gradients_reach_every_parameter(flow, grads: dict) -> None:
    assert set(grads) == set(flow.params)
    checked = 0
    for pname, g in grads.items():
        if _held_fixed(flow, pname):
            assert not bool(jnp.any(g != 0)), f"a gradient reached {pname}, which its transform holds fixed"
            continue
        checked += 1
        assert bool(jnp.all(jnp.isfinite(g))), f"non-finite gradient for {pname}"
        assert float(jnp.abs(g).sum()) > 0, f"zero gradient for {pname}"
    assert checked


def _check_context_changes_the_output(out: dict) -> None:
    assert float(jnp.abs(out["y_pts"] - out["y_pts_other"]).max()) > 1e-6
    lp1, lp2 = out["lp_ctx"]
    assert float(jnp.abs(lp1 - lp2).max()) > 1e-6


def _check_save_load(flow, path, out: dict, inputs: dict) -> None:
    numpyroflows.save(flow, path)
    loaded = numpyroflows.load(path)
    assert type(loaded) is type(flow) and loaded.config() == flow.config()
    assert set(loaded.params) == set(flow.params)
    for k, v in flow.params.items():
        assert loaded.params[k].dtype == v.dtype, k
        np.testing.assert_array_equal(np.asarray(loaded.params[k]), np.asarray(v), err_msg=k)
    # what it computes, through the same compiled battery: the same numbers, bit for bit
    jax.tree_util.tree_map(np.testing.assert_array_equal, _battery(loaded, inputs), out)


# ------------------------------------------------------------------------------------------------- the catalogue
@pytest.mark.parametrize("name,input_dim,context_dim", CASES)
def test_catalogue_entry(name, input_dim, context_dim, subtests, tmp_path):
    flow, out, inputs = build(name, input_dim, context_dim), battery(name, input_dim, context_dim), _inputs(
        name, input_dim, context_dim)
    assert flow.context_dim == context_dim
    with subtests.test("fused sample and log_prob"):
        _check_fused_sample_and_log_prob(out, input_dim)
    with subtests.test("round trips both ways, float64"):
        _check_round_trips(out, inputs)
    with subtests.test("log-dets match the autodiff Jacobian (3-D), and each other"):
        _check_log_dets(out)
    for loss in ("grad_sample", "grad_log_prob") if input_dim == 3 else ():
        with subtests.test(f"gradients reach every parameter ({loss})"):
            _check_gradients_reach_every_parameter(flow, out[loss].params)
    if context_dim:
        with subtests.test("context changes the output"):
            _check_context_changes_the_output(out)
    if input_dim == 2:
        with subtests.test("2-D density integrates to 1"):
            # milder parameters, same structure (no recompilation)
            assert abs(float(battery(name, 2, 0, scale=0.15)["integral"]) - 1.0) < 1e-2
    with subtests.test("save / load"):
        _check_save_load(flow, tmp_path / "flow.npz", out, inputs)


@pytest.mark.parametrize("name", NAMES)
def test_takes_context_is_what_the_flow_does(name):
    flow = build(name, 3, 2)  # (test_catalogue_entry checks that the context is used)
    assert flow.context_dim == (2 if CATALOGUE[name].takes_context else 0)
    if not CATALOGUE[name].takes_context:
        with pytest.raises(ValueError, match="context_dim=0"):
            flow(jnp.ones(2))


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


# ------------------------------------------------------------------------------------------------- float32
@pytest.mark.parametrize("name,context_dim", [("MAF", 2), ("IAF", 0), ("NSF", 2), ("Coupling-spline", 0),
                                              ("BNAF", 2), ("Planar", 0), ("LeakyReLU", 2)])
def test_round_trip_both_ways_float32(name, context_dim):
    # realistic parameters (scale 0.1), fresh points ~10x outside the spline bounds
    flow = build(name, 3, context_dim, dtype="float32", scale=0.1)
    inputs = _inputs(name, 3, context_dim, far=5.0, dtype=jnp.float32)
    x_back, y_back = _round_trips(flow, inputs["ctx_batch"], inputs["x"], inputs["y_fresh"])
    assert x_back.dtype == y_back.dtype == jnp.float32
    np.testing.assert_allclose(x_back, inputs["x"], atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(y_back, inputs["y_fresh"], atol=1e-3, rtol=1e-4)


# ------------------------------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("name", ["NSF", "Planar"])
def test_2d_conditional_density_integrates_to_one(name):
    flow = build(name, 2, 2, scale=0.15)
    grid = tuple(jnp.asarray(a) for a in grid_2d(name, 300))
    integral = jax.jit(lambda f, c, g: jnp.sum(jnp.exp(f(c).log_prob(g[0])) * g[1]))(flow, _normal(7, 2), grid)
    assert abs(float(integral) - 1.0) < 1e-2


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
