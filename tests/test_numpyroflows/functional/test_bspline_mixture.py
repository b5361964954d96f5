"""numpyroflows.functional.{bspline, mixture} agree with the torch kernels (values, log-derivatives, gradients)."""

from __future__ import annotations

import pytest

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from numpyroflows.functional import bspline as jbs  # noqa: E402
from numpyroflows.functional import mixture as jmx  # noqa: E402
from pyroflows.functional import bspline as tbs  # noqa: E402
from pyroflows.functional import mixture as tmx  # noqa: E402

BOUND = 3.0
K_SPLINE = 6
K_MIX = 5
FAR = [1e3, -1e3, 1e8, -1e8]


def _raw(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    """``n`` raw-parameter rows: normal × 1.5, with 5 far-out rows (saturated softplus, floors) mixed in if n ≥ 10."""
    raw = 1.5 * rng.standard_normal((n, p))
    cols = np.arange(p) % 2 == 0
    far = [np.zeros(p), np.full(p, 30.0), np.full(p, -30.0), np.where(cols, 25.0, -40.0), np.where(cols, -60.0, 19.9)]
    if n >= 2 * len(far):
        raw[: len(far)] = far
        raw = rng.permutation(raw)
    return raw


def _spline_inputs(rng: np.random.Generator, n: int) -> np.ndarray:
    """Inside, exactly on every knot and bound, and far outside ``[-BOUND, BOUND]``."""
    h = 2 * BOUND / K_SPLINE
    special = np.array([-BOUND + j * h for j in range(K_SPLINE + 1)] + [BOUND] + FAR)
    x = rng.uniform(-1.3 * BOUND, 1.3 * BOUND, n)
    x[: special.size] = special
    return rng.permutation(x)


def _torch_kernel(fn, z: np.ndarray, raw: np.ndarray, **kw):
    """Values, log-derivatives and the autograd gradients of ``sum(out)`` and ``sum(ladj)`` w.r.t. input and params."""
    zt = torch.tensor(z, requires_grad=True)
    pt = torch.tensor(raw, requires_grad=True)
    out, ladj = fn(zt, pt, **kw)
    g_out = torch.autograd.grad(out.sum(), (zt, pt), retain_graph=True)
    g_ladj = torch.autograd.grad(ladj.sum(), (zt, pt))
    return [t.detach().numpy() for t in (out, ladj, *g_out, *g_ladj)]


def _jax_kernel(fn, z: np.ndarray, raw: np.ndarray, **kw):
    @jax.jit
    def everything(z, p):
        (out, ladj), pullback = jax.vjp(lambda z, p: fn(z, p, **kw), z, p)
        ones = jnp.ones_like(out)
        return out, ladj, *pullback((ones, jnp.zeros_like(ladj))), *pullback((jnp.zeros_like(out), ones))

    return [np.asarray(t) for t in everything(jnp.asarray(z), jnp.asarray(raw))]


def _assert_parity(fn_t, fn_j, z, raw, value_tol, grad_tol, z_jax=None, **kw):
    """Same inputs (or ``z_jax``, the JAX kernel's own copy of input points that sit exactly on its knots)."""
    z_jax = z if z_jax is None else z_jax
    names = ["value", "ladj", "d value/d input", "d value/d params", "d ladj/d input", "d ladj/d params"]
    torch_out, jax_out = _torch_kernel(fn_t, z, raw, **kw), _jax_kernel(fn_j, z_jax, raw, **kw)
    for name, a, b, tol in zip(names, torch_out, jax_out, [value_tol] * 2 + [grad_tol] * 4):
        assert a.shape == b.shape, name
        assert np.all(np.isfinite(b)), name
        err = np.abs(a - b) / (1 + np.abs(a))
        print(f"{fn_j.__name__:16s} {name:17s} max scaled diff {err.max():.1e}")
        assert err.max() <= tol, f"{name}: max scaled diff {err.max():.2e}"


# ---------------------------------------------------------------------------------------------------- B-spline


def test_bspline_constants_and_identity_at_zero():
    assert jbs.MIN_SLOPE == tbs.MIN_SLOPE and jbs._SLOPE_SHIFT == tbs._SLOPE_SHIFT
    assert jbs.num_params(K_SPLINE) == tbs.num_params(K_SPLINE) == K_SPLINE + 2
    x = jnp.linspace(-2 * BOUND, 2 * BOUND, 41)
    y, ladj = jax.jit(jbs.bspline_forward, static_argnums=2)(x, jnp.zeros(K_SPLINE + 2), BOUND)
    assert jnp.max(jnp.abs(y - x)) < 1e-12 and jnp.max(jnp.abs(ladj)) < 1e-12


def test_bspline_knots_match_torch():
    raw = _raw(np.random.default_rng(0), 12, K_SPLINE + 2)
    c = jax.jit(jbs.bspline_coefficients, static_argnums=1)(jnp.asarray(raw), BOUND)
    np.testing.assert_allclose(c, tbs.bspline_coefficients(torch.tensor(raw), BOUND).numpy(), rtol=1e-13, atol=1e-13)
    vt, st = tbs.bspline_knots(torch.tensor(raw), BOUND)
    vj, sj = jax.jit(jbs.bspline_knots, static_argnums=1)(jnp.asarray(raw), BOUND)
    np.testing.assert_allclose(vj, vt.numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(sj, st.numpy(), rtol=1e-14)


def test_bspline_forward_parity():
    rng = np.random.default_rng(1)
    x = _spline_inputs(rng, 64)
    raw = _raw(rng, 64, K_SPLINE + 2)
    _assert_parity(tbs.bspline_forward, jbs.bspline_forward, x, raw, 1e-12, 1e-10, bound=BOUND)


def test_bspline_inverse_parity_including_exact_knot_values():
    # At a knot value v_j, log S' has a kink (one-sided derivatives differ), and the two packages' v_j may differ in
    # the last bit (summation order of cumsum/mean), so each kernel gets the knot values it computes itself.
    rng = np.random.default_rng(2)
    raw = _raw(rng, 64, K_SPLINE + 2)
    rows = np.arange(K_SPLINE + 1)
    y = 3.0 * rng.standard_normal(64)
    y[K_SPLINE + 1 : K_SPLINE + 5] = FAR
    y_jax = y.copy()
    y[rows] = tbs.bspline_knots(torch.tensor(raw), BOUND)[0].numpy()[rows, rows]  # exactly on knot j of row j
    y_jax[rows] = np.asarray(jax.jit(jbs.bspline_knots, static_argnums=1)(jnp.asarray(raw), BOUND)[0])[rows, rows]
    assert np.abs(y - y_jax).max() < 1e-14
    _assert_parity(tbs.bspline_inverse, jbs.bspline_inverse, y, raw, 1e-12, 1e-10, z_jax=y_jax, bound=BOUND)


def test_bspline_round_trip_and_broadcasting():
    rng = np.random.default_rng(3)
    raw = jnp.asarray(_raw(rng, 2, K_SPLINE + 2))[:, None, :]  # (2, 1, P) against x (16,): output (2, 16)
    x = jnp.asarray(_spline_inputs(rng, 16))

    @jax.jit
    def round_trip(x, raw):
        y, ladj = jbs.bspline_forward(x, raw, BOUND)
        return y, ladj, *jbs.bspline_inverse(y, raw, BOUND)

    y, ladj, back, ladj_back = round_trip(x, raw)
    assert y.shape == ladj.shape == (2, 16)
    assert jnp.max(jnp.abs(back - x) / (1 + jnp.abs(x))) < 1e-10
    assert jnp.max(jnp.abs(ladj_back - ladj)) < 1e-8


# ---------------------------------------------------------------------------------------------------- mixture


def test_mixture_constants_and_params_match_torch():
    for name in ["MIN_A", "MIN_S", "TOTAL_W0", "CENTER_SPREAD", "_A_SHIFT", "_S_SHIFT"]:
        assert getattr(jmx, name) == getattr(tmx, name), name
    assert jmx.num_params(K_MIX) == tmx.num_params(K_MIX) == 3 * K_MIX + 1
    for k in [1, 2, 8]:
        raw = _raw(np.random.default_rng(k), 10, 3 * k + 1)
        for a, b in zip(jax.jit(jmx.mixture_params)(jnp.asarray(raw)), tmx.mixture_params(torch.tensor(raw))):
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-14, atol=0)


def test_mixture_forward_parity():
    rng = np.random.default_rng(4)
    x = 4.0 * rng.standard_normal(64)
    x[:4] = FAR
    x[4:9] = np.linspace(-3, 3, 5)  # exactly on the raw-zero centres
    raw = _raw(rng, 64, 3 * K_MIX + 1)
    _assert_parity(tmx.mixture_forward, jmx.mixture_forward, x, raw, 1e-12, 1e-10)


def test_mixture_inverse_parity():
    rng = np.random.default_rng(5)
    y = 4.0 * rng.standard_normal(64)
    y[:4] = FAR
    y[4] = 0.0
    raw = _raw(rng, 64, 3 * K_MIX + 1)
    _assert_parity(tmx.mixture_inverse, jmx.mixture_inverse, y, raw, 1e-10, 1e-8)


def test_mixture_round_trip_and_broadcasting():
    rng = np.random.default_rng(6)
    raw = jnp.asarray(_raw(rng, 3, 3 * K_MIX + 1))[:, None, :]
    x = jnp.asarray(np.concatenate([4.0 * rng.standard_normal(5), FAR]))

    @jax.jit
    def round_trip(x, raw):
        y, ladj = jmx.mixture_forward(x, raw)
        return y, ladj, *jmx.mixture_inverse(y, raw)

    y, ladj, back, ladj_back = round_trip(x, raw)
    assert y.shape == ladj.shape == (3, 9)
    assert jnp.max(jnp.abs(back - x) / (1 + jnp.abs(x))) < 1e-10
    assert jnp.max(jnp.abs(ladj_back - ladj)) < 1e-8


# ---------------------------------------------------------------------------------------------------- jit / vmap / f32

KERNELS = [  # (forward, inverse, number of raw parameters)
    pytest.param(
        lambda z, p: jbs.bspline_forward(z, p, BOUND),
        lambda z, p: jbs.bspline_inverse(z, p, BOUND),
        K_SPLINE + 2,
        id="bspline",
    ),
    pytest.param(jmx.mixture_forward, jmx.mixture_inverse, 3 * K_MIX + 1, id="mixture"),
]


@pytest.mark.parametrize("forward, inverse, p", KERNELS)
def test_jit_and_vmap_match(forward, inverse, p):
    rng = np.random.default_rng(7)
    z = jnp.asarray(np.concatenate([3.0 * rng.standard_normal(8), FAR]))
    raw = jnp.asarray(_raw(rng, 12, p))

    @jax.jit
    def check(z, raw):
        pairs = []
        for fn in (forward, inverse):
            pairs += zip(fn(z, raw), jax.vmap(fn)(z, raw))
            # per-example gradients (vmap of grad) against the gradient of the batched sum
            summed = jax.grad(lambda z, r, fn=fn: fn(z, r)[0].sum(), argnums=(0, 1))(z, raw)
            pairs += zip(summed, jax.vmap(jax.grad(lambda z, r, fn=fn: fn(z, r)[0], argnums=(0, 1)))(z, raw))
        return pairs

    for a, b in check(z, raw):
        assert a.shape == b.shape
        assert jnp.max(jnp.abs(a - b) / (1 + jnp.abs(a))) < 1e-10


@pytest.mark.parametrize("forward, inverse, p", KERNELS)
def test_float32_finite_far_outside(forward, inverse, p):
    rng = np.random.default_rng(8)
    z = jnp.asarray(np.array([0.0, 1.5, -2.0, 3.0, 1e4, -1e4, 1e20, -1e20, 1e30, -1e30]), dtype=jnp.float32)
    raw = jnp.asarray(_raw(rng, 10, p), dtype=jnp.float32)

    @jax.jit
    def values_and_grads(z, raw):
        return [
            (fn(z, raw), jax.grad(lambda z, r, fn=fn: sum(t.sum() for t in fn(z, r)), argnums=(0, 1))(z, raw))
            for fn in (forward, inverse)
        ]

    for (out, ladj), grads in values_and_grads(z, raw):
        for t in (out, ladj, *grads):
            assert t.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(t)))
