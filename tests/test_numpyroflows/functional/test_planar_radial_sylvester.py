"""numpyroflows.functional planar / radial / sylvester: float64 parity with the torch kernels (values, log-dets,
gradients w.r.t. inputs and parameters), exact inverses of fresh data, jit / vmap, float32 far outside."""

from __future__ import annotations

import pytest

jax = pytest.importorskip("jax", reason="numpyroflows needs JAX (installed by `make test`)")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import numpyroflows.functional.planar as jpl  # noqa: E402
import numpyroflows.functional.radial as jra  # noqa: E402
import numpyroflows.functional.sylvester as jsy  # noqa: E402
import pyroflows.functional.planar as tpl  # noqa: E402
import pyroflows.functional.radial as tra  # noqa: E402
import pyroflows.functional.sylvester as tsy  # noqa: E402

D = 4


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def parity(tfn, jfn, args, *, val_tol=1e-10, grad_tol=1e-8, seed=0):
    """Run ``tfn`` (torch, float64, autograd) and ``jfn`` (JAX) on the same numbers; compare every output and the
    gradients of a random linear functional of the outputs w.r.t. every floating argument (relative to ``1 + |ref|``).
    Returns the max abs differences ``(values, gradients)``."""
    args = [np.asarray(a) for a in args]
    diff = [i for i, a in enumerate(args) if np.issubdtype(a.dtype, np.floating)]
    targs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) if i in diff else torch.tensor(a)
             for i, a in enumerate(args)]
    touts = _as_tuple(tfn(*targs))
    rng = np.random.default_rng(seed)
    cots = [rng.normal(size=tuple(o.shape)) for o in touts]
    sum(((o * torch.tensor(c)).sum() for o, c in zip(touts, cots))).backward()
    tgrads = [targs[i].grad.numpy() if targs[i].grad is not None else np.zeros_like(args[i]) for i in diff]

    jargs = [jnp.asarray(a) for a in args]

    def loss(*float_args):
        full = list(jargs)
        for i, a in zip(diff, float_args):
            full[i] = a
        outs = _as_tuple(jfn(*full))
        return sum((o * c).sum() for o, c in zip(outs, cots)), outs

    (_, jouts), jgrads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(diff))), has_aux=True))(
        *[jargs[i] for i in diff])
    vmax = gmax = 0.0
    for t, j in zip(touts, jouts):
        t = t.detach().numpy()
        assert j.shape == t.shape and j.dtype == jnp.float64
        assert np.all(np.isfinite(np.asarray(j)))
        err = np.abs(np.asarray(j) - t)
        assert np.all(err <= val_tol * (1 + np.abs(t))), err.max()
        vmax = max(vmax, float(err.max(initial=0.0)))
    for t, j in zip(tgrads, jgrads):
        assert np.all(np.isfinite(np.asarray(j)))
        err = np.abs(np.asarray(j) - t)
        assert np.all(err <= grad_tol * (1 + np.abs(t))), err.max()
        gmax = max(gmax, float(err.max(initial=0.0)))
    return vmax, gmax


def _rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------------------- planar

def _planar_params(rng):
    """Three parameter sets stacked on a batch axis: generic, ``wᵀu`` far above torch's softplus threshold
    (``wᵀû ≈ wᵀu``), and far below it (``wᵀû → -1``: nearly singular in the ``w`` direction)."""
    u, w, b = 1.5 * rng.normal(size=(3, D)), 1.5 * rng.normal(size=(3, D)), 1.5 * rng.normal(size=3)
    u[1] = 30 * w[1] / (w[1] @ w[1])
    u[2] = -30 * w[2] / (w[2] @ w[2])
    return u, w, b


def _points(rng, n=6):
    """Points inside, far outside (1e3) and at the origin, ``(n + 3, 1, D)`` to broadcast against parameter sets."""
    x = np.concatenate([2 * rng.normal(size=(n, D)), 1e3 * rng.normal(size=(2, D)), np.zeros((1, D))], 0)
    return x[:, None]


def test_planar_parity():
    rng = _rng(1)
    u, w, b = _planar_params(rng)
    x = _points(rng)
    parity(tpl.planar_constrain, jpl.planar_constrain, [u, w])
    parity(tpl.planar_forward, jpl.planar_forward, [x, u, w, b])
    parity(tpl.planar_inverse, jpl.planar_inverse, [x, u, w, b], val_tol=1e-8)


def test_planar_zero_w_matches():
    u, w = _rng(2).normal(size=D), np.zeros(D)
    tu = tpl.planar_constrain(torch.tensor(u), torch.tensor(w))
    ju = jpl.planar_constrain(jnp.asarray(u), jnp.asarray(w))
    for t, j in zip(tu, ju):
        np.testing.assert_allclose(np.asarray(j), t.numpy(), rtol=1e-14)


def test_planar_round_trip_fresh_jit_vmap():
    rng = _rng(3)
    u, w, b = (jnp.asarray(a) for a in _planar_params(rng))
    y = jnp.asarray(3 * rng.normal(size=(50, 1, D)))
    inv, fwd = jax.jit(jpl.planar_inverse), jax.jit(jpl.planar_forward)
    x, ild = inv(y, u[:2], w[:2], b[:2])  # fresh y (the third set is numerically singular: checked by parity only)
    y2, ld = fwd(x, u[:2], w[:2], b[:2])
    assert jnp.abs(y2 - y).max() < 1e-12 and jnp.abs(ld + ild).max() < 1e-12
    # vmap over the parameter sets equals the broadcast call
    xv, ldv = jax.jit(jax.vmap(jpl.planar_inverse, in_axes=(None, 0, 0, 0)))(y[:, 0], u[:2], w[:2], b[:2])
    assert jnp.abs(jnp.swapaxes(xv, 0, 1) - x).max() < 1e-12 and jnp.abs(ldv.T - ild).max() < 1e-12


# ----------------------------------------------------------------------------------------------------------- radial

RADIAL_RAW = np.array([(0.3, -0.7), (-1.2, 2.5), (30.0, -30.0), (-30.0, 30.0), (25.0, 25.0)])


def test_radial_parity():
    rng = _rng(4)
    ra, rb = RADIAL_RAW.T
    x0 = 1.5 * rng.normal(size=(len(ra), D))
    x = np.concatenate([np.broadcast_to(_points(rng), (9, len(ra), D)), x0[None]], 0)  # incl. the centre (r = 0)
    parity(tra.radial_alpha_beta, jra.radial_alpha_beta, [ra, rb])
    parity(tra.radial_forward, jra.radial_forward, [x, x0, ra, rb])
    parity(tra.radial_inverse, jra.radial_inverse, [x, x0, ra, rb])


def test_radial_round_trip_fresh_jit_vmap():
    rng = _rng(5)
    x0, ra, rb = jnp.asarray(rng.normal(size=(3, D))), jnp.asarray([0.4, -1.0, 2.0]), jnp.asarray([-1.0, 0.5, 3.0])
    y = jnp.asarray(3 * rng.normal(size=(50, 1, D)))
    x, ild = jax.jit(jra.radial_inverse)(y, x0, ra, rb)
    y2, ld = jax.jit(jra.radial_forward)(x, x0, ra, rb)
    assert jnp.abs(y2 - y).max() < 1e-12 and jnp.abs(ld + ild).max() < 1e-12
    xv, ldv = jax.jit(jax.vmap(jra.radial_inverse, in_axes=(None, 0, 0, 0)))(y[:, 0], x0, ra, rb)
    assert jnp.abs(jnp.swapaxes(xv, 0, 1) - x).max() < 1e-12 and jnp.abs(ldv.T - ild).max() < 1e-12


# -------------------------------------------------------------------------------------------------------- sylvester

def _upper_index(m):
    iu = np.triu_indices(m, 1)
    return iu[0] * m + iu[1]


def test_sylvester_helpers_parity():
    rng = _rng(6)
    for shape in [(D, D), (3, 2, D)]:
        parity(tsy.householder_product, jsy.householder_product, [1.5 * rng.normal(size=shape)])
    for shape in [(D, 2), (3, D, D)]:
        parity(tsy.orthonormal_columns, jsy.orthonormal_columns, [1.5 * rng.normal(size=shape)])
    parity(tsy.sylvester_diag, jsy.sylvester_diag, [np.array([-40.0, -1.0, 0.0, 0.5, 40.0])])
    for m, batch in [(3, (2,)), (1, ())]:
        diag, upper = rng.normal(size=batch + (m,)), rng.normal(size=(m * (m - 1) // 2,))
        parity(tsy.upper_triangular, jsy.upper_triangular, [diag, upper, _upper_index(m)])
    np.testing.assert_array_equal(np.asarray(jsy.upper_triangular(jnp.ones(3), None, None)), np.eye(3))


def _sylvester_from_raw(mod, qtype, m):
    """Raw parameters -> (q, r, r̃) as the transforms build them (Householder or QR ``Q``, tanh diagonals)."""

    def build(q_raw, r_diag, r_up, rt_diag, rt_up, index):
        q = mod.householder_product(q_raw)[..., :m] if qtype == "householder" else mod.orthonormal_columns(q_raw)
        r = mod.upper_triangular(mod.sylvester_diag(r_diag), r_up, index)
        rt = mod.upper_triangular(mod.sylvester_diag(rt_diag), rt_up, index)
        return q, r, rt

    return build


def _sylvester_raw(rng, qtype, m, batch=()):
    q_raw = 1.5 * rng.normal(size=batch + ((2, D) if qtype == "householder" else (D, m)))
    k = m * (m - 1) // 2
    return [q_raw, 1.5 * rng.normal(size=batch + (m,)), rng.normal(size=batch + (k,)),
            1.5 * rng.normal(size=batch + (m,)), rng.normal(size=batch + (k,)), _upper_index(m)]


def _torch_build(qtype, m, raw):
    out = _sylvester_from_raw(tsy, qtype, m)(*(torch.tensor(a) for a in raw))
    return [a.numpy() for a in out]


def test_sylvester_parity_through_raw_parameters():
    """Householder ``Q`` (2 reflections, M = 3 < D), two parameter sets broadcast against points; gradients all the
    way to the raw parameters."""
    rng = _rng(7)
    m = 3
    raw = _sylvester_raw(rng, "householder", m, batch=(2,))
    b = 1.5 * rng.normal(size=(2, m))
    x = _points(rng)
    tb, jb = _sylvester_from_raw(tsy, "householder", m), _sylvester_from_raw(jsy, "householder", m)
    for tk, jk in [(tsy.sylvester_forward, jsy.sylvester_forward), (tsy.sylvester_inverse, jsy.sylvester_inverse)]:
        parity(lambda x, b, *p, tk=tk: tk(x, *tb(*p), b), lambda x, b, *p, jk=jk: jk(x, *jb(*p), b), [x, b, *raw],
               val_tol=1e-9)


def test_sylvester_parity_free_arrays():
    """Orthonormal ``Q`` from QR with M = D; gradients w.r.t. ``q``, ``r``, ``r̃``, ``b`` taken as free arrays."""
    rng = _rng(8)
    q, r, rt = _torch_build("orthogonal", D, _sylvester_raw(rng, "orthogonal", D))
    b = 1.5 * rng.normal(size=D)
    x = _points(rng)[:, 0]
    parity(tsy.sylvester_forward, jsy.sylvester_forward, [x, q, r, rt, b])
    parity(tsy.sylvester_inverse, jsy.sylvester_inverse, [x, q, r, rt, b], val_tol=1e-9)


def test_sylvester_round_trip_fresh_jit_vmap():
    rng = _rng(9)
    m = 3
    q, r, rt = (jnp.asarray(a) for a in _torch_build("householder", m, _sylvester_raw(rng, "householder", m)))
    b = jnp.asarray(rng.normal(size=m))
    y = jnp.asarray(3 * rng.normal(size=(50, D)))
    inv, fwd = jax.jit(jsy.sylvester_inverse), jax.jit(jsy.sylvester_forward)
    x, ild = inv(y, q, r, rt, b)
    y2, ld = fwd(x, q, r, rt, b)
    assert jnp.abs(y2 - y).max() < 1e-12 and jnp.abs(ld + ild).max() < 1e-12
    # vmap over points equals the batched call
    xv, ldv = jax.jit(jax.vmap(jsy.sylvester_inverse, in_axes=(0, None, None, None, None)))(y, q, r, rt, b)
    assert jnp.abs(xv - x).max() < 1e-12 and jnp.abs(ldv - ild).max() < 1e-12


# ------------------------------------------------------------------------------------------------------------ float32

def test_float32_finite_far_outside():
    rng = _rng(10)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    pts = f32(np.concatenate([2 * rng.normal(size=(4, D)), 1e4 * rng.normal(size=(3, D)), np.zeros((1, D))]))
    u, w, b = (f32(a[0]) for a in _planar_params(rng))
    x0 = f32(rng.normal(size=D))
    m = 3
    q, r, rt = (f32(a) for a in _torch_build("householder", m, _sylvester_raw(rng, "householder", m)))
    bs = f32(rng.normal(size=m))
    cases = [(jpl.planar_forward, (u, w, b)), (jpl.planar_inverse, (u, w, b)),
             (jra.radial_forward, (x0, f32(0.3), f32(-30.0))), (jra.radial_inverse, (x0, f32(30.0), f32(-2.0))),
             (jsy.sylvester_forward, (q, r, rt, bs)), (jsy.sylvester_inverse, (q, r, rt, bs))]

    def loss(pts, params):  # every kernel in one jitted value-and-gradient (one compilation)
        outs = [fn(pts, *p) for (fn, _), p in zip(cases, params)]
        return sum(o.sum() for out in outs for o in out), outs

    (_, outs), (g_pts, g_params) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        pts, [p for _, p in cases])
    assert jnp.all(jnp.isfinite(g_pts)) and g_pts.dtype == jnp.float32
    for out, g in zip(outs, jax.tree_util.tree_leaves(g_params)):
        assert all(o.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(o))) for o in out)
        assert bool(jnp.all(jnp.isfinite(g)))
    x_syl = outs[-1][0][:4]
    assert jnp.abs(jax.jit(jsy.sylvester_forward)(x_syl, q, r, rt, bs)[0] - pts[:4]).max() < 1e-4


def test_planar_starts_at_the_identity():
    from numpyroflows.transforms import PlanarTransform

    t = PlanarTransform(5, key=jax.random.PRNGKey(3))
    x = jax.random.normal(jax.random.PRNGKey(4), (50, 5))
    y, ladj = t.forward_and_log_det(x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-6)
    np.testing.assert_allclose(np.asarray(ladj), 0.0, atol=1e-6)
