"""numpyroflows.functional.spline / affine: float64 parity with the torch kernels (values, log-derivatives and
gradients), round trips, identity at zero parameters, finiteness far outside the bound, jit and vmap."""

from __future__ import annotations

import functools

import pytest

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from numpyroflows.functional import affine as JA  # noqa: E402
from numpyroflows.functional import spline as JS  # noqa: E402
from pyroflows.functional import affine as TA  # noqa: E402
from pyroflows.functional import spline as TS  # noqa: E402

BOUND = 3.0
TORCH_SPLINES = {
    ("forward", "fused"): TS.rqs_forward,
    ("forward", "reference"): TS.rqs_forward_reference,
    ("inverse", "fused"): TS.rqs_inverse,
    ("inverse", "reference"): TS.rqs_inverse_reference,
}
JAX_SPLINES = {"forward": JS.rqs_forward, "inverse": JS.rqs_inverse}
# jitted once per (kernel, shapes): eager dispatch of the many small ops costs more than compiling
JITTED = {name: jax.jit(fn, static_argnums=2) for name, fn in JAX_SPLINES.items()}


@functools.partial(jax.jit, static_argnums=0)
def _jax_loss_grad(direction, x, p, w1, w2):
    def loss(a, b):
        out, ladj = JAX_SPLINES[direction](a, b, BOUND)
        return (out * w1).sum() + (ladj * w2).sum(), (out, ladj)

    (gx, gp), (out, ladj) = jax.grad(loss, argnums=(0, 1), has_aux=True)(x, p)
    return out, ladj, gx, gp


def _inputs(direction: str, n: int = 40, k: int = 6, param_batch: bool = True, seed: int = 0, on_knots: bool = True):
    """Values (n, 3) inside, far outside, exactly on the bound and (optionally) exactly on interior knots of the
    searched axis; raw parameters normal × 1.5 with a few far-out rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64) * 2.5
    x[:4] *= 30  # far outside the bound
    x[2, 0], x[3, 0] = 1e30, -1e30
    x[4] = BOUND  # exactly on the bound
    x[5] = -BOUND
    shape = (n, 3, 3 * k - 1) if param_batch else (3, 3 * k - 1)
    p = torch.randn(*shape, generator=g, dtype=torch.float64) * 1.5
    if param_batch:
        # far-out raw parameters: bins and derivatives near their floors / very large. (Not on knots: there the
        # log-derivative is ill-conditioned, ~1e-7 apart between the kernels from a rounding error in ξ.)
        p[14:18] *= 15
    if on_knots:
        knots = TS.spline_knots(p, BOUND)[0 if direction == "forward" else 1].expand(n, 3, k + 1)
        x[6:9] = knots[6:9, :, 1]
        x[9:11] = knots[9:11, :, k - 1]
        x[11:14] = knots[11:14, :, k // 2]
    return x, p


def _weights(shape):
    g = torch.Generator().manual_seed(1)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


def _torch_run(fn, x, p, w1, w2):
    xt, pt = x.clone().requires_grad_(), p.clone().requires_grad_()
    out, ladj = fn(xt, pt, BOUND)
    ((out * w1).sum() + (ladj * w2).sum()).backward()
    return out.detach().numpy(), ladj.detach().numpy(), xt.grad.numpy(), pt.grad.numpy()


def _jax_run(direction, x, p, w1, w2):
    return tuple(np.asarray(t) for t in _jax_loss_grad(direction, *(t.numpy() for t in (x, p, w1, w2))))


# ------------------------------------------------------------------------------------------------ spline parity
def test_constants_and_knots_match_torch():
    assert JS.MIN_BIN_WIDTH == TS.MIN_BIN_WIDTH and JS.MIN_DERIVATIVE == TS.MIN_DERIVATIVE
    assert JS._DERIV_SHIFT == TS._DERIV_SHIFT and JS.num_params(7) == TS.num_params(7) == 20
    _, p = _inputs("forward")
    knots = [np.asarray(t) for t in jax.jit(JS.spline_knots, static_argnums=1)(p.numpy(), BOUND)]
    for a, b in zip(knots, TS.spline_knots(p, BOUND)):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-13, atol=1e-14)
    xk, yk, d = knots
    assert (xk[..., 0] == -BOUND).all() and (xk[..., -1] == BOUND).all() and (yk[..., -1] == BOUND).all()
    assert (d[..., 0] == 1).all() and (d[..., -1] == 1).all()


@pytest.mark.parametrize("kernel", ["fused", "reference"])
@pytest.mark.parametrize("param_batch", [True, False])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_spline_values_and_gradients_match_torch(direction, param_batch, kernel):
    t_fn = TORCH_SPLINES[direction, kernel]
    # values (and gradients of the output alone, which is C¹ in (x, θ)) with points exactly on knots and bounds
    x, p = _inputs(direction, param_batch=param_batch)
    w1, _ = _weights(x.shape)
    zero = torch.zeros_like(w1)
    t_out, t_ladj, t_gx, t_gp = _torch_run(t_fn, x, p, w1, zero)
    j_out, j_ladj, j_gx, j_gp = _jax_run(direction, x, p, w1, zero)
    np.testing.assert_allclose(j_out, t_out, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(j_ladj, t_ladj, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(j_gx, t_gx, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(j_gp, t_gp, rtol=1e-8, atol=1e-8)
    # full gradients (output and log-derivative); the log-derivative has a kink at the knots, where the two kernels
    # may pick neighbouring bins a rounding error apart, so the knot rows are left out here (the bounds stay)
    x, p = _inputs(direction, param_batch=param_batch, on_knots=False)
    w1, w2 = _weights(x.shape)
    t_res, j_res = _torch_run(t_fn, x, p, w1, w2), _jax_run(direction, x, p, w1, w2)
    for a, b in zip(j_res, t_res):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-8)
    assert all(np.isfinite(a).all() for a in j_res)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_spline_input_derivative_is_exp_ladj_via_jacfwd(direction):
    x, p = _inputs(direction, n=16, on_knots=False)
    fn = JAX_SPLINES[direction]
    xs, ps = x.numpy().reshape(-1), p.numpy().reshape(-1, p.shape[-1])
    jac, ladj = jax.jit(jax.vmap(jax.jacfwd(lambda a, b: fn(a, b, BOUND), has_aux=True)))(xs, ps)
    expected = np.where(np.abs(xs) <= BOUND, np.exp(np.asarray(ladj)), 1.0)
    if direction == "inverse":
        expected = 1 / expected
    np.testing.assert_allclose(np.asarray(jac), expected, rtol=1e-9)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_spline_finite_far_outside_and_at_the_bound(direction):
    k = 5
    raws = np.stack([np.zeros(3 * k - 1), 1.5 * np.random.default_rng(0).standard_normal(3 * k - 1),
                     np.linspace(-60.0, 60.0, 3 * k - 1), np.linspace(60.0, -60.0, 3 * k - 1)])
    for dtype, big in [(np.float32, 1e30), (np.float64, 1e300)]:
        v = np.array([-big, -1e6, -BOUND, -BOUND + 1e-5, 0.0, BOUND - 1e-5, BOUND, 1e6, big], dtype=dtype)
        v = np.broadcast_to(v, (4, v.size))
        p = np.broadcast_to(raws[:, None].astype(dtype), v.shape + raws.shape[-1:])
        out, ladj = (np.asarray(t) for t in JITTED[direction](v, p, BOUND))
        assert out.dtype == ladj.dtype == dtype
        assert np.isfinite(out).all() and np.isfinite(ladj).all()
        assert (out[:, 0] == v[:, 0]).all() and (out[:, -1] == v[:, -1]).all()  # identity tails
        tol = 1e-4 if dtype == np.float32 else 1e-10  # float32: as torch's (ill-conditioned at the extreme raws)
        assert (np.abs(out[:, 2] + BOUND) < tol).all() and (np.abs(out[:, -3] - BOUND) < tol).all()
    # gradients (float64), also exactly at ±bound and at ±1e300
    _, _, gx, gp = (np.asarray(t) for t in _jax_loss_grad(direction, v, p, np.ones(v.shape), np.ones(v.shape)))
    assert np.isfinite(gx).all() and np.isfinite(gp).all()
    assert (gx[:, 0] == 1).all() and (gp[:, 0] == 0).all()  # tails: identity, no parameter gradient


def test_spline_round_trip_and_identity_at_zero():
    fwd, inv = JITTED["forward"], JITTED["inverse"]
    x = np.broadcast_to(np.linspace(-10, 10, 101)[:, None], (101, 3))
    zeros = np.zeros((101, 3, 3 * 8 - 1))
    for fn in (fwd, inv):
        y, ladj = fn(x, zeros, 5.0)
        np.testing.assert_allclose(np.asarray(y), x, rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(ladj), 0.0, rtol=0, atol=1e-12)
    p = 1.5 * np.random.default_rng(3).standard_normal((101, 3, 3 * 8 - 1))
    y, ladj = fwd(x, p, 5.0)
    x2, ladj2 = inv(y, p, 5.0)
    assert np.abs(np.asarray(x2) - x).max() < 1e-10
    assert np.abs(np.asarray(ladj2) - np.asarray(ladj)).max() < 1e-9


def test_spline_jit_and_vmap():
    rng = np.random.default_rng(4)
    p = 1.5 * rng.standard_normal((7, 3, 3 * 4 - 1))
    x = 4 * rng.standard_normal((7, 3))
    t_y, t_ladj = TS.rqs_forward(torch.tensor(x), torch.tensor(p), BOUND)
    y, ladj = jax.jit(jax.vmap(lambda a, b: JS.rqs_forward(a, b, BOUND)))(x, p)
    np.testing.assert_allclose(np.asarray(y), t_y.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(ladj), t_ladj.numpy(), rtol=1e-12, atol=1e-12)
    xv, ladj_inv = jax.jit(jax.vmap(jax.vmap(lambda a, b: JS.rqs_inverse(a, b, BOUND))))(y, p)  # scalars
    np.testing.assert_allclose(np.asarray(xv), x, atol=1e-10)
    np.testing.assert_allclose(np.asarray(ladj_inv), np.asarray(ladj), atol=1e-9)
    # shared parameters (3, P) broadcast over a batch of values (7, 3), under vmap over the batch
    t_y, _ = TS.rqs_forward(torch.tensor(x), torch.tensor(p[0]), BOUND)
    y, _ = jax.jit(jax.vmap(lambda a: JS.rqs_forward(a, p[0], BOUND)))(x)
    np.testing.assert_allclose(np.asarray(y), t_y.numpy(), rtol=1e-12, atol=1e-12)


def _autodiff_bin_params(params, value, bound, axis):
    """The selected bin's quantities by the plain formulas (knots, then a gather), differentiated by JAX itself: the
    reference for the tangent rule of ``JS._bin_params`` (parameters last)."""
    xk, yk, d = JS.spline_knots(params, bound)
    knots = (xk, yk)[axis]
    idx = jnp.sum(value[..., None] >= knots[..., 1:-1], axis=-1)[..., None]
    pick = [jnp.take_along_axis(t, idx + j, axis=-1)[..., 0] for t in (xk, yk, d) for j in (0, 1)]
    (x0, x1), (y0, y1), (d0, d1) = pick[:2], pick[2:4], pick[4:]
    return x0, x1 - x0, y0, y1 - y0, d0, d1


@pytest.mark.parametrize("axis", [0, 1])
def test_bin_params_tangent_rule_matches_autodiff_all_orders(axis):
    """The hand-written tangent rule of the bins-first bin selection against JAX's own derivatives of the plain
    formulas: values, forward mode (jvp), reverse mode (vjp) and second order (a Hessian-vector product), float64."""
    rng = np.random.default_rng(7)
    k = 6
    p = jnp.asarray(1.5 * rng.standard_normal((13, 3, 3 * k - 1)))
    v = jnp.asarray(rng.uniform(-BOUND, BOUND, (13, 3)))
    w = [jnp.asarray(rng.standard_normal((13, 3))) for _ in range(6)]

    def scalar(fn):
        return lambda q: sum((a * b).sum() for a, b in zip(w, fn(q)))

    def flat_bins(q):  # values and parameters flattened bins-first, as rqs_forward hands them over
        v_flat, q_flat, shape, shared = JS._flat(v, q, -1)
        assert not shared  # per-value parameters: the path with the tangent rule
        return [t.reshape(shape) for t in JS._bin_params(q_flat, v_flat, BOUND, axis)]

    ours = scalar(flat_bins)
    ref = scalar(lambda q: _autodiff_bin_params(q, v, BOUND, axis))
    tangent = jnp.asarray(rng.standard_normal(p.shape))

    def derivatives(f):  # one compiled function per side: eager dispatch of the second-order graph took ~10 s
        return jax.jit(lambda q, t: (f(q), jax.jvp(f, (q,), (t,))[1], jax.grad(f)(q),
                                     jax.jvp(jax.grad(f), (q,), (t,))[1]))(p, tangent)

    (value, jvp, grad, hvp), (value_ref, jvp_ref, grad_ref, hvp_ref) = derivatives(ours), derivatives(ref)
    np.testing.assert_allclose(value, value_ref, rtol=1e-13)
    np.testing.assert_allclose(jvp, jvp_ref, rtol=1e-11)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(hvp, hvp_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("shape", [(40, 3), (5, 8, 1), (1,)])
def test_spline_parameters_first_layout_equals_last(direction, shape):
    """``param_axis=0`` (bins first, as autoregressive layers hand them over) gives the values and gradients of the
    usual layout, for batches whose last axis is long, short (1) or alone, and for parameters broadcast over values;
    values computed under differentiation equal the plain ones (the two paths sum the bins in another order)."""
    rng = np.random.default_rng(8)
    fn = JAX_SPLINES[direction]
    x = jnp.asarray(rng.uniform(-1.2 * BOUND, 1.2 * BOUND, shape))
    for p_shape in (shape + (17,), shape[-1:] + (17,)):
        p = jnp.asarray(1.5 * rng.standard_normal(p_shape))
        last = fn(x, p, BOUND)
        first = jax.jit(fn, static_argnums=(2, 3))(x, jnp.moveaxis(p, -1, 0), BOUND, 0)
        for a, b in zip(last, first):
            assert a.shape == b.shape == shape
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)

        def loss(q, axis):
            out, ladj = fn(x, q, BOUND, axis)
            return (out * out).sum() + ladj.sum(), (out, ladj)

        (g_last, aux), g_first = jax.grad(loss, has_aux=True)(p, -1), jax.grad(loss, has_aux=True)(
            jnp.moveaxis(p, -1, 0), 0)[0]
        np.testing.assert_allclose(g_last, jnp.moveaxis(g_first, 0, -1), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(aux[0], last[0], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(aux[1], last[1], rtol=1e-12, atol=1e-13)
    t_out = (TS.rqs_forward if direction == "forward" else TS.rqs_inverse)(
        torch.tensor(np.asarray(x)), torch.tensor(np.moveaxis(np.asarray(p), -1, 0)), BOUND, param_axis=0)
    np.testing.assert_allclose(t_out[0].numpy(), last[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize(("shape", "p_batch"), [((40, 3), (3,)), ((6, 5, 2), (5, 1)), ((7, 4), ())])
def test_shared_spline_parameters_equal_broadcast_ones(direction, shape, p_batch):
    """Parameters shared across the values (an elementwise layer: knots computed once, each value's bin gathered)
    give the values, parameter and input gradients and second input derivatives of the same parameters broadcast
    to every value (the per-value path)."""
    rng = np.random.default_rng(11)
    fn = JAX_SPLINES[direction]
    x = jnp.asarray(rng.uniform(-1.2 * BOUND, 1.2 * BOUND, shape))
    p = jnp.asarray(1.5 * rng.standard_normal(p_batch + (17,)))
    full = jnp.broadcast_to(p, shape + (17,))
    assert JS._flat(x, p, -1)[3] and not JS._flat(x, full, -1)[3]  # the two paths are the ones compared

    def loss(q, v):
        out, ladj = fn(v, q, BOUND)
        return (out * out).sum() + ladj.sum()

    jitted = jax.jit(fn, static_argnums=2)
    for a, b in zip(jitted(x, p, BOUND), jitted(x, full, BOUND)):
        assert a.shape == b.shape == shape
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    g_shared, gx_shared = jax.jit(jax.grad(loss, argnums=(0, 1)))(p, x)
    # the broadcast inside: the spline sees per-value parameters, autodiff sums their gradients back to p's shape
    g_full, gx_full = jax.jit(jax.grad(lambda q, v: loss(jnp.broadcast_to(q, shape + (17,)), v), argnums=(0, 1)))(
        p, x)
    np.testing.assert_allclose(g_shared, g_full, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(gx_shared, gx_full, rtol=1e-12, atol=1e-13)
    # second derivative in x (a Hessian-vector product): the shared path leaves x to plain autodiff
    t = jnp.asarray(rng.standard_normal(shape))
    hvp = [jax.jit(lambda q, v: jax.jvp(jax.grad(lambda u: loss(q, u)), (v,), (t,))[1])(q, x) for q in (p, full)]
    np.testing.assert_allclose(hvp[0], hvp[1], rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------ affine parity
@pytest.mark.parametrize("param_batch", [True, False])
@pytest.mark.parametrize("name", ["affine_forward", "affine_inverse", "additive_forward", "additive_inverse"])
def test_affine_values_and_gradients_match_torch(name, param_batch):
    assert JA.MIN_SCALE == TA.MIN_SCALE and JA._SCALE_SHIFT == TA._SCALE_SHIFT
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64) * 3
    width = 2 if name.startswith("affine") else 1
    p = torch.randn(*((7, 3, width) if param_batch else (3, width)), generator=g, dtype=torch.float64) * 1.5
    if width == 2:
        p.view(-1, 3, 2)[-1, :, 1] = torch.tensor([-60.0, 25.0, 60.0], dtype=p.dtype)  # floor; softplus threshold
    w1, w2 = _weights(x.shape)
    t_fn, j_fn = getattr(TA, name), getattr(JA, name)
    xt, pt = x.clone().requires_grad_(), p.clone().requires_grad_()
    out, ladj = t_fn(xt, pt)
    ((out * w1).sum() + (ladj * w2).sum()).backward()

    def loss(a, b, w1, w2):
        o, la = j_fn(a, b)
        return (o * w1).sum() + (la * w2).sum(), (o, la)

    (gx, gp), (j_out, j_ladj) = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(
        *(t.numpy() for t in (x, p, w1, w2)))
    for a, b, tol in [(j_out, out, 1e-12), (j_ladj, ladj, 1e-12), (gx, xt.grad, 1e-10), (gp, pt.grad, 1e-10)]:
        np.testing.assert_allclose(np.asarray(a), b.detach().numpy(), rtol=tol, atol=tol)
    assert j_out.shape == j_ladj.shape == x.shape


def test_affine_round_trip_identity_float32_and_vmap():
    x = np.linspace(-5, 5, 12).reshape(4, 3)
    p = np.random.default_rng(0).standard_normal((2, 4, 3, 2)) * 1.5
    p[0] = 0.0

    @jax.jit
    def run(x, p):
        y, ladj = jax.vmap(JA.affine_forward)(x, p)
        x2, ladj2 = JA.affine_inverse(y, p)
        return y, ladj, x2, ladj2

    for i in range(2):
        y, ladj, x2, ladj2 = (np.asarray(t) for t in run(x, p[i]))
        if i == 0:  # identity at zero
            assert np.abs(y - x).max() < 1e-15 and np.abs(ladj).max() < 1e-15
        assert np.abs(x2 - x).max() < 1e-12 and (ladj2 == ladj).all()
    v32, p32 = np.array([1e30, -1e30], np.float32), np.array([[0.5, 80.0], [0.0, -80.0]], np.float32)
    for fn in (JA.affine_forward, JA.affine_inverse):
        out, ladj = (np.asarray(t) for t in jax.jit(fn)(v32, p32))
        assert out.dtype == np.float32 and np.isfinite(out).all() and np.isfinite(ladj).all()
